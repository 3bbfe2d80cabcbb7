# Sourced by the scripts: which tested stack (DLRM_DIST_STACK, default newest) and its venv.
stack="${DLRM_DIST_STACK:-newest}"
if [ "$stack" = newest ]; then venv="${DLRM_DIST_VENV:-.venv}"; else venv="${DLRM_DIST_VENV:-.venv-$stack}"; fi
