"""`edgeloop keys generate`: file modes, no silent overwrite, keys that sign and verify."""

from __future__ import annotations

import os
import stat

import pytest

from edgeloop.cli import main
from protocol import ProtocolError
from protocol.manifest import Cohort, Manifest, load_public_key, sign, verify
from trainer.publish import keys


def manifest(**kw) -> Manifest:
    base = dict(name="m", version=2, sha256="ab" * 32, size=10, task="classification", labels=("a", "b"),
                card={}, created=1000, expires=2**32, cohort=Cohort())
    return Manifest(**{**base, **kw})


def test_generate_writes_private_0600_and_prints_both_public_forms(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    private, public = tmp_path / "k" / keys.PRIVATE_NAME, tmp_path / "k" / keys.PUBLIC_NAME
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert str(private) in out and str(public) in out
    b64 = out.split('trusted_keys = ["', 1)[1].split('"', 1)[0]
    signing = keys.load_signing_key(private)
    data, sig = sign(manifest(), signing)
    # Both public forms an agent config accepts verify the signature.
    for trusted in (load_public_key(b64), load_public_key(public.read_bytes())):
        assert verify(data, sig, [trusted], now=2000).version == 2


def test_generate_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["keys", "generate", "--out", str(out)]) == 0
    before = (out / keys.PRIVATE_NAME).read_bytes()
    assert main(["keys", "generate", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / keys.PRIVATE_NAME).read_bytes() == before
    assert main(["keys", "generate", "--out", str(out), "--force"]) == 0
    assert (out / keys.PRIVATE_NAME).read_bytes() != before


def test_show_prints_the_raw_public_key(tmp_path, capsys):
    files = keys.generate(tmp_path)
    capsys.readouterr()
    assert main(["keys", "show", "--key", str(files.private)]) == 0
    assert capsys.readouterr().out.strip() == files.public_b64
    assert main(["keys", "show", "--key", str(files.public)]) == 0
    assert capsys.readouterr().out.strip() == files.public_b64


def test_a_readable_private_key_is_refused(tmp_path):
    files = keys.generate(tmp_path)
    os.chmod(files.private, 0o644)
    with pytest.raises(keys.KeyError_, match="chmod 600"):
        keys.load_signing_key(files.private)


def test_manifest_signed_with_another_key_is_refused(tmp_path):
    ours, theirs = keys.generate(tmp_path / "a"), keys.generate(tmp_path / "b")
    data, sig = sign(manifest(), keys.load_signing_key(theirs.private))
    with pytest.raises(ProtocolError) as e:
        verify(data, sig, [load_public_key(ours.public_b64)], now=2000)
    assert e.value.reason == "bad_signature"


def test_rotation_agents_trusting_both_keys_accept_either(tmp_path):
    old, new = keys.generate(tmp_path / "old"), keys.generate(tmp_path / "new")
    trusted = [load_public_key(old.public_b64), load_public_key(new.public_b64)]
    for files in (old, new):
        data, sig = sign(manifest(), keys.load_signing_key(files.private))
        assert verify(data, sig, trusted, now=2000).name == "m"
