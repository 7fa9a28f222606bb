# Shared by the ci/ scripts: source it after setting LOG_TAG.

log() { printf '\033[1m[%s]\033[0m %s\n' "${LOG_TAG:-ci}" "$*" >&2; }

# apt_install PKG...: installs Debian packages (as root), or says how to and fails.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages: $*; install them with: sudo apt-get install -y $*"
    return 1
  fi
  log "installing $* from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
