#!/usr/bin/env bash
# One node of an attn cluster; `ray up` runs this through cluster.yaml / cluster.local.yaml.
#
#   node.sh setup --shared DIR [--venv DIR | --python PATH]    every node, as a setup command
#       Installs attn from the synced tree (~/attn) with the pinned versions of constraints.txt into
#       --venv (default ~/attn-venv; skipped when pyproject.toml and the pins are unchanged), or uses an
#       existing environment (--python, e.g. a shared conda env on-premises). Writes ~/.attn/cluster.env,
#       sourced from ~/.bashrc (Ray runs every command through it): PATH, the shared folder, where runs
#       and data live (ATTN_STORAGE_PATH, ATTN_DATA_ROOT) and Ray token authentication. Refuses, in one
#       line naming what it found, a Python other than 3.10-3.12 and an NVIDIA GPU without a driver
#       new enough for the torch wheels (580 for CUDA 13.0).
#   node.sh head [--ip IP] [--port 5000] [--backend-store-uri URI]    the head, before `ray start --head`
#       Creates the cluster's Ray token on the shared folder (once) and (re)starts the MLflow server:
#       store sqlite on the shared folder (or URI, e.g. postgresql://... on RDS), artifacts on the shared
#       folder. Adds MLFLOW_TRACKING_URI=http://IP:PORT to cluster.env, so runs submitted to the cluster
#       track there. IP: the head's private address (default: the first of `hostname -I`). The server
#       runs MLflow's basic-auth app: its user and password are made once into $ATTN_SHARED/.mlflow
#       (mode 600) and reach every process on the cluster through cluster.env, never a project file.
#   node.sh stop-mlflow                                          the head: stop that MLflow server
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "$here/../.." && pwd)"
envdir="$HOME/.attn"
envfile="$envdir/cluster.env"

die() { echo "node.sh: $*" >&2; exit 2; }

# Python versions attn supports, and the NVIDIA driver the CUDA 13.0 torch wheels of constraints.txt need.
MIN_DRIVER=580

check_python() {
    local py="$1" v
    v="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
        || die "setup: $py does not run on $(hostname); give --python PATH of a Python 3.10 to 3.12"
    case "$v" in
        3.10|3.11|3.12) ;;
        *) die "setup: $py on $(hostname) is Python $v; attn needs Python 3.10 to 3.12 (cluster.yaml's image has 3.12; or --python PATH)" ;;
    esac
}

check_gpu_driver() {
    # Only nodes with an NVIDIA device: a CPU head needs no driver.
    command -v lspci >/dev/null 2>&1 || return 0
    local gpu driver
    gpu="$(lspci 2>/dev/null | grep -i 'nvidia' | head -n 1 | cut -d: -f3- | sed 's/^ *//')" || true
    [ -n "$gpu" ] || return 0
    command -v nvidia-smi >/dev/null 2>&1 \
        || die "setup: $(hostname) has an NVIDIA GPU ($gpu) but no driver (no nvidia-smi); boot an image with one (cluster.yaml's Deep Learning Base AMI)"
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')" || true
    [ -n "$driver" ] || die "setup: $(hostname) has an NVIDIA GPU ($gpu) but nvidia-smi finds no working driver; reboot or use an image with one"
    [ "${driver%%.*}" -ge "$MIN_DRIVER" ] 2>/dev/null \
        || die "setup: the NVIDIA driver on $(hostname) is $driver; the torch wheels of constraints.txt (CUDA 13.0) need $MIN_DRIVER or newer"
}

setup() {
    local shared="" venv="$HOME/attn-venv" python=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --shared) shared="${2:?}"; shift 2 ;;
            --venv) venv="${2:?}"; shift 2 ;;
            --python) python="${2:?}"; shift 2 ;;
            *) die "setup: unknown option '$1' (valid: --shared DIR, --venv DIR, --python PATH)" ;;
        esac
    done
    [ -n "$shared" ] || die "setup: --shared DIR is required (the folder every node mounts at the same path)"
    mkdir -p "$shared" 2>/dev/null || true
    [ -d "$shared" ] && [ -w "$shared" ] || die "setup: --shared $shared is not a writable folder on $(hostname); mount the shared storage first"
    check_python "${python:-python3}"
    check_gpu_driver
    if [ -z "$python" ]; then
        local stamp
        stamp="$venv/.attn-installed-$(cat "$src/pyproject.toml" "$here/constraints.txt" | sha256sum | cut -c1-16)"
        if [ ! -e "$stamp" ]; then
            [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
            "$venv/bin/python" -m pip install --quiet --upgrade pip
            "$venv/bin/python" -m pip install --quiet -c "$here/constraints.txt" -e "$src"
            touch "$stamp"
        fi
        python="$venv/bin/python"
    fi
    "$python" -c "import attn, ray" 2>/dev/null || die "setup: $python cannot import attn and ray; install attn there or leave out --python"
    mkdir -p "$envdir" "$shared/runs" "$shared/data" "$shared/.ray"
    chmod 700 "$shared/.ray"
    # Keep what `node.sh head` added (the tracking URI) when setup runs again on an existing cluster.
    local tracking=""
    [ -f "$envfile" ] && tracking="$(grep '^export MLFLOW_TRACKING_URI=' "$envfile" || true)"
    cat > "$envfile" <<ENV
export PATH="$(dirname "$python"):\$PATH"
export ATTN_SHARED="$shared"
export ATTN_STORAGE_PATH="$shared/runs"
export ATTN_DATA_ROOT="$shared"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$shared/.ray/auth_token"
export RAY_USAGE_STATS_ENABLED=0
ENV
    [ -z "$tracking" ] || echo "$tracking" >> "$envfile"
    # MLflow's credentials (made by `node.sh head`, mode 600 on the shared folder): every process Ray
    # starts on any node reads them from the environment, none from a file of the project.
    # (if/fi: a missing file must not make sourcing cluster.env fail under set -e)
    echo "if [ -f \"$shared/.mlflow/credentials\" ]; then . \"$shared/.mlflow/credentials\"; fi" >> "$envfile"
    local line='[ -f "$HOME/.attn/cluster.env" ] && . "$HOME/.attn/cluster.env"'
    touch "$HOME/.bashrc"
    grep -qxF "$line" "$HOME/.bashrc" || echo "$line" >> "$HOME/.bashrc"
    echo "node.sh: $(hostname) ready: $("$python" -c 'from importlib.metadata import version as v; print("attn", v("attn"), "ray", v("ray"))')"
}

load_env() {
    [ -f "$envfile" ] || die "$envfile is missing: run 'node.sh setup --shared DIR' on this node first"
    # shellcheck disable=SC1090
    . "$envfile"
}

start_head() {
    local ip="" port=5000 store="" auth=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --ip) ip="${2:?}"; shift 2 ;;
            --port) port="${2:?}"; shift 2 ;;
            --backend-store-uri) store="${2:?}"; shift 2 ;;
            *) die "head: unknown option '$1' (valid: --ip IP, --port PORT, --backend-store-uri URI)" ;;
        esac
    done
    load_env
    [ -n "$ip" ] || ip="$(hostname -I | awk '{print $1}')"
    [ -n "$store" ] || { mkdir -p "$ATTN_SHARED/mlflow"; store="sqlite:///$ATTN_SHARED/mlflow/mlflow.db"; }
    if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
        (umask 077; python -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
    fi
    stop_mlflow
    mkdir -p "$ATTN_SHARED/mlartifacts"
    mlflow_credentials
    # One server process writes the store. 0.0.0.0 so the workers (private network) and SSH tunnels
    # (localhost) reach it; the security group keeps it off the internet, MLflow's basic-auth app
    # refuses requests without the cluster's credentials, and the Host check refuses other names.
    # Its own session (setsid), so that stop-mlflow ends the server and its web-server children together.
    # No job execution: MLflow's server jobs (GenAI evaluation, trace roll-ups) serve nothing attn logs,
    # and would start a job runner and seven Huey consumers, ~1.8 GB of memory and ~20 CPU-seconds.
    (set -a; . "$auth/server.env"; set +a
     MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_AUTH_CONFIG_PATH="$auth/auth.ini" \
        setsid mlflow server --app-name basic-auth \
        --backend-store-uri "$store" --artifacts-destination "$ATTN_SHARED/mlartifacts" --host 0.0.0.0 --port "$port" \
        --workers 1 --allowed-hosts "$ip:$port,localhost:$port,127.0.0.1:$port" \
        > "$envdir/mlflow.log" 2>&1 < /dev/null &
     echo $! > "$envdir/mlflow.pid")
    local i
    for i in $(seq 1 120); do
        if python -c "import urllib.request, sys; urllib.request.urlopen('http://$ip:$port/health', timeout=2)" 2>/dev/null; then
            sed -i '/^export MLFLOW_TRACKING_URI=/d' "$envfile"
            echo "export MLFLOW_TRACKING_URI=http://$ip:$port" >> "$envfile"
            echo "node.sh: MLflow server at http://$ip:$port (store $store, artifacts $ATTN_SHARED/mlartifacts)"
            return 0
        fi
        kill -0 "$(cat "$envdir/mlflow.pid")" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$envdir/mlflow.log" >&2
    die "head: the MLflow server did not answer on http://$ip:$port/health; its log is $envdir/mlflow.log"
}

# MLflow's basic-auth app: one user (attn), a random password and the server's session secret, made
# once into the shared folder (mode 600), and the app's config; the users database lives beside the store.
mlflow_credentials() {
    auth="$ATTN_SHARED/.mlflow"
    mkdir -p "$auth" && chmod 700 "$auth"
    if [ ! -s "$auth/credentials" ]; then
        (umask 077; printf 'export MLFLOW_TRACKING_USERNAME=attn\nexport MLFLOW_TRACKING_PASSWORD=%s\n' \
            "$(python -c 'import secrets; print(secrets.token_hex(24))')" > "$auth/credentials")
    fi
    if [ ! -s "$auth/server.env" ]; then
        (umask 077; printf 'MLFLOW_FLASK_SERVER_SECRET_KEY=%s\n' "$(python -c 'import secrets; print(secrets.token_hex(24))')" \
            > "$auth/server.env")
    fi
    # shellcheck disable=SC1091
    . "$auth/credentials"
    (umask 077; cat > "$auth/auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$ATTN_SHARED/mlflow/auth.db
admin_username = $MLFLOW_TRACKING_USERNAME
admin_password = $MLFLOW_TRACKING_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
)
}

stop_mlflow() {
    local pidfile="$envdir/mlflow.pid" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    setup) shift; setup "$@" ;;
    head) shift; start_head "$@" ;;
    stop-mlflow) shift; stop_mlflow ;;
    *) die "usage: node.sh setup --shared DIR [--venv DIR | --python PATH] | head [--ip IP] [--port P] [--backend-store-uri URI] | stop-mlflow" ;;
esac
