// The pooled 1280-d features (layer flatten_1) of nsfwjs's MobileNetV2, computed by TF.js itself
// (pure JS CPU backend), for tools/nsfwjs_check.py to compare the converted torch weights with.
// Needs @tensorflow/tfjs (npm install @tensorflow/tfjs@4.22.0 in any folder; set NODE_PATH to its node_modules).
// usage: node nsfwjs_features.js <package dir> <images.u8: N x 224 x 224 x 3 RGB> <N> <out.f32> <keras|nsfwjs>
const tf = require("@tensorflow/tfjs");
const fs = require("fs");
const [pkg, imgPath, nStr, outPath, scaling] = process.argv.slice(2);
(async () => {
  await tf.setBackend("cpu");
  const m = require(pkg + "/dist/models/mobilenet_v2/model.min.js");
  const b64 = require(pkg + "/dist/models/mobilenet_v2/group1-shard1of1.min.js");
  const buf = Buffer.from(b64, "base64");
  const data = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const model = await tf.loadLayersModel(tf.io.fromMemory({modelTopology: m.modelTopology,
    weightSpecs: m.weightsManifest[0].weights, weightData: data}));
  const feat = tf.model({inputs: model.inputs, outputs: model.getLayer("flatten_1").output});
  const n = parseInt(nStr, 10);
  let x = tf.tensor4d(Float32Array.from(new Uint8Array(fs.readFileSync(imgPath))), [n, 224, 224, 3]);
  x = scaling === "keras" ? x.div(127.5).sub(1) : x.div(255);
  const out = [];
  for (let i = 0; i < n; i++) {  // one at a time: the CPU backend's memory stays small
    out.push(...(await feat.predict(x.slice([i, 0, 0, 0], [1, 224, 224, 3])).data()));
  }
  fs.writeFileSync(outPath, Buffer.from(new Float32Array(out).buffer));
  console.log(`features: ${n} x ${out.length / n}`);
})();
