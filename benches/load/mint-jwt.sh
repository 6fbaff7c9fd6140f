#!/usr/bin/env bash
# RS256 tokens for the gateway-jwt load contender: a fresh 2048-bit RSA key,
# its JWKS (for a `jwks_file` issuer) and one signed token per subject,
# valid for a day. Only openssl, coreutils and python3 (for hex to bytes).
#
#   benches/load/mint-jwt.sh <dir> <iss> <aud> <scope> [count]
#
# Writes <dir>/jwt-key.pem and <dir>/jwks.json (kid "bench"); prints
# <count> (default 1) tokens, one a line, for subjects bench-1 ... bench-N.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
dir=$1 iss=$2 aud=$3 scope=$4 count=${5:-1}
[[ "$count" =~ ^[1-9][0-9]*$ ]] || { echo "count must be a positive integer" >&2; exit 2; }

b64url() { basenc --base64url -w0 | tr -d '='; }

key="$dir/jwt-key.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" 2>/dev/null
n=$(openssl rsa -in "$key" -noout -modulus | sed 's/^Modulus=//' \
  | python3 -c 'import sys, binascii; sys.stdout.buffer.write(binascii.unhexlify(sys.stdin.read().strip()))' \
  | b64url)
# openssl's default public exponent, 65537.
printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"bench","n":"%s","e":"AQAB"}]}\n' \
  "$n" > "$dir/jwks.json"

header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
now=$(date +%s)
for i in $(seq "$count"); do
  payload=$(printf '{"iss":"%s","aud":"%s","sub":"bench-%d","scope":"%s","iat":%d,"exp":%d}' \
    "$iss" "$aud" "$i" "$scope" "$now" $((now + 86400)) | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$key" -binary | b64url)
  echo "$header.$payload.$sig"
done
