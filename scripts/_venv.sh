# Shared by scripts/serve and scripts/test: source it from the repository root, then
#   ensure_venv [EXTRA]
# makes .venv with $PYTHON (default python3) when it is missing, and installs the
# package into it (editable, with the optional dependencies EXTRA, e.g. "test") only
# when .venv has not got this pyproject.toml installed yet. The stamp
# .venv/.gsitransfer-installed holds the SHA-256 of the pyproject.toml installed and
# the extra installed with it; while it matches, nothing is installed and nothing goes
# to the network (a complete .venv starts offline). pip's output goes to
# .venv/gsitransfer-install.log and is shown only when the install fails.

_venv_digest() {
    .venv/bin/python -c \
        'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
        pyproject.toml
}

# venv_is_current [EXTRA]: whether .venv has this pyproject.toml (and EXTRA) installed
venv_is_current() {
    local extra=${1:-} have_digest="" have_extra=""
    [ -x .venv/bin/python ] && [ -f .venv/.gsitransfer-installed ] || return 1
    read -r have_digest have_extra <.venv/.gsitransfer-installed || true
    [ "$have_digest" = "$(_venv_digest)" ] && { [ -z "$extra" ] || [ "$have_extra" = "$extra" ]; }
}

ensure_venv() {
    local extra=${1:-} stamp=.venv/.gsitransfer-installed log=.venv/gsitransfer-install.log
    local spec=. upgrade=":"
    if [ ! -x .venv/bin/python ]; then
        "${PYTHON:-python3}" -m venv .venv
        rm -f "$stamp"
        upgrade=".venv/bin/python -m pip install --disable-pip-version-check --upgrade pip"
    fi
    venv_is_current "$extra" && return 0
    [ -z "$extra" ] || spec=".[$extra]"
    echo "installing gsitransfer${extra:+[$extra]} into .venv (once; again only when pyproject.toml changes)" >&2
    rm -f "$stamp"
    # compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/ here
    if ! { $upgrade && .venv/bin/python -m pip install --disable-pip-version-check -e "$spec" \
               --config-settings editable_mode=compat; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "error: could not install gsitransfer into .venv (pip's output above; also in $log)" >&2
        return 1
    fi
    echo "$(_venv_digest) ${extra:--}" >"$stamp"
}
