#!/usr/bin/env bash
# A private CA and the broker's TLS certificate, with openssl.
#
#   make-certs.sh [--ca-dir DIR] [--out DIR] [--days N] HOSTNAME [MORE_NAMES...]
#   make-certs.sh [--ca-dir DIR] [--out DIR] [--days N] --client AGENT_ID
#
# HOSTNAME and MORE_NAMES are the names (or IP addresses) agents use to reach
# the broker; "localhost", 127.0.0.1 and "mosquitto" (the compose service) are
# always added. The CA is made once in --ca-dir (default
# deploy/docker/secrets/ca) and reused; keep ca.key offline once the broker
# certificate is made. The broker files go to --out (default
# deploy/docker/secrets/mosquitto): ca.crt, server.crt, server.key.
#
# --client makes AGENT_ID.crt/.key (CN = the agent id) for brokers that
# require client certificates (require_certificate and
# use_identity_as_username in mosquitto.conf).
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ca_dir="$here/../docker/secrets/ca"
out="$here/../docker/secrets/mosquitto"
days=825
client=""
names=()
ID_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'

die() { echo "error: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --ca-dir|--out|--days|--client) [[ $# -ge 2 ]] || die "$1 needs a value" ;;&
        --ca-dir) ca_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        --client) client="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        -*) die "unknown option $1" ;;
        *) names+=("$1"); shift ;;
    esac
done
command -v openssl >/dev/null || die "openssl not found"
[[ "$days" =~ ^[0-9]+$ ]] || die "--days must be a number"
if [[ -n "$client" ]]; then
    [[ "$client" =~ $ID_RE ]] || die "agent id '$client' must match $ID_RE"
else
    [[ ${#names[@]} -ge 1 ]] || die "give the broker's host name (as agents will reach it)"
fi

umask 077
mkdir -p "$ca_dir" "$out"

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [[ ! -s "$ca_dir/ca.key" ]]; then
    new_key "$ca_dir/ca.key"
    openssl req -x509 -new -key "$ca_dir/ca.key" -sha256 -days 3650 -subj "/CN=edgeloop broker CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out "$ca_dir/ca.crt"
    echo "made the CA: $ca_dir/ca.crt (keep $ca_dir/ca.key offline)" >&2
fi

# sign NAME KEYFILE CERTFILE EXTENSIONS
sign() {
    local csr
    csr="$(mktemp)"
    new_key "$2"
    openssl req -new -key "$2" -subj "/CN=$1" -out "$csr"
    openssl x509 -req -in "$csr" -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" -sha256 -days "$days" \
        -set_serial "0x$(openssl rand -hex 16)" -extfile <(printf '%b' "$4") -out "$3" 2>/dev/null
    rm -f "$csr"
}

base="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid"
if [[ -n "$client" ]]; then
    sign "$client" "$out/$client.key" "$out/$client.crt" "$base\nextendedKeyUsage=clientAuth\n"
    echo "made $out/$client.crt for agent $client (signed by $ca_dir/ca.crt)" >&2
    exit 0
fi

san=""
for name in "${names[@]}" localhost 127.0.0.1 mosquitto; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
        san+="IP:$name,"
    else
        san+="DNS:$name,"
    fi
done
sign "${names[0]}" "$out/server.key" "$out/server.crt" "$base\nextendedKeyUsage=serverAuth\nsubjectAltName=${san%,}\n"
cp "$ca_dir/ca.crt" "$out/ca.crt"
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "made $out/server.crt for ${san%,}" >&2
echo "agents need $out/ca.crt (mqtt.ca_file); the broker reads $out (mounted at /mosquitto/secrets)" >&2
