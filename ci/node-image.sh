#!/usr/bin/env bash
# Builds lily-e2e's kind node image from the Go module proxy and Debian packages only, once,
# into the Docker engine: `lily-e2e/kind-node:<kubernetes version>` (the pinned default).
#
# Like `kind build node-image`, which cannot run here: it pulls its base image and the
# kindnetd and local-path images from registries. The image carries the hash of its recipe
# (this script and tools.lock.toml) in the label `io.lily-e2e.recipe` and is rebuilt only
# when that hash changes.
#
# Recipe:
# - the pinned tools of the kind set (`lily-e2e tools install --kind`): kubelet, kubeadm,
#   kube-proxy, kubectl, crictl at the local control plane's Kubernetes version; etcd, the
#   control-plane binaries, coredns, local-path-provisioner;
# - a node root: debootstrap (minbase) of bookworm with systemd, containerd, runc, the CNI
#   plugins (bridge, host-local, portmap), iptables/nftables and the tools kind's entrypoint
#   uses; kind's own node files (images/base/files of the pinned kind module) and its systemd
#   trimming; containerd's CRI config from kind with `restrict_oom_score_adj = true` (a
#   node cannot lower its own oom_score_adj in this sandbox, and the pause container asks
#   -998) and the sandbox image kubeadm names;
# - one image per control-plane component, tagged as `kubeadm config images list` names it
#   (with etcd's tag set to the pinned etcd: the kind provider sets the same
#   `etcd.local.imageTag`, taken from the label `io.lily-e2e.etcd-image-tag`): static
#   binaries on an empty root, kube-proxy on a slim Debian root (it runs iptables); pause
#   compiled from build/pause/linux/pause.c of the Kubernetes module;
# - local-path-provisioner as the default StorageClass `standard` (kind's manifest, from the
#   kind module, with this image's provisioner and helper);
# - the images preloaded into the node's containerd (`ctr images import`), as kind does.
#
# Needs root (debootstrap, chroot) and a Docker engine that runs privileged containers
# (ci/docker.sh). Prints the build time and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=node-image
. ci/lib.sh

suite=bookworm
mirror="${LILY_E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${LILY_E2E_CACHE:-$HOME/.cache/lily-e2e}"
bin=./target/debug/lily-e2e

[ "$(id -u)" -eq 0 ] || { log "building the node image needs root (debootstrap, chroot)"; exit 1; }
[ -x "$bin" ] || { log "$bin is not built; run ./ci/setup.sh --kind first"; exit 1; }
./ci/docker.sh

"$bin" tools install --kind >&2
version_of() { "$bin" tools path --version "$1" | cut -d' ' -f2; }
path_of() { "$bin" tools path "$1"; }
k8s=$(version_of kubelet)
etcd_v=$(version_of etcd)
coredns_v=$(version_of coredns)
lpp_v=$(version_of local-path-provisioner)
kind_v=$(version_of kind)
image="lily-e2e/kind-node:$k8s"
recipe=$( { cat ci/node-image.sh; cat tools.lock.toml; } | sha256sum | cut -c1-16)

have=$(docker image inspect --format '{{ index .Config.Labels "io.lily-e2e.recipe" }}' "$image" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  log "$image is current (recipe $recipe)"
  exit 0
fi
[ -z "$have" ] && log "building $image (recipe $recipe)" || log "rebuilding $image: recipe $have -> $recipe"
start=$(date +%s)

command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev

work=$(mktemp -d /tmp/lily-e2e-node-image.XXXXXX)
cid=""
cleanup() {
  [ -n "$cid" ] && docker rm -f "$cid" >/dev/null 2>&1 || true
  for m in proc sys dev; do umount -l "$work/node/$m" 2>/dev/null || true; done
  rm -rf "$work"
  docker image rm "lily-e2e/kind-node-build:$recipe" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The source trees the recipe reads: kind's node files and storage manifest, pause.c.
module_dir() {
  (cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}
kind_src=$(module_dir "sigs.k8s.io/kind@$kind_v")
k8s_src=$(module_dir "k8s.io/kubernetes@$k8s")
[ -d "$kind_src/images/base/files" ] || { log "sigs.k8s.io/kind@$kind_v has no images/base/files ($kind_src)"; exit 1; }
[ -f "$k8s_src/build/pause/linux/pause.c" ] || { log "k8s.io/kubernetes@$k8s has no build/pause/linux/pause.c"; exit 1; }

# --- root filesystems -----------------------------------------------------------------
debs="$cache/debootstrap/$suite"
mkdir -p "$debs"
bootstrap() { # DIR PACKAGES
  log "debootstrap $suite into $1"
  debootstrap --variant=minbase --cache-dir="$debs" --include="$2" "$suite" "$1" "$mirror" >"$1.log" 2>&1 || {
    log "debootstrap failed; the end of its log:"; tail -n 20 "$1.log" >&2; exit 1; }
  rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/* \
    "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
}
node="$work/node"
bootstrap "$node" systemd,systemd-sysv,dbus,containerd,runc,iptables,nftables,iproute2,containernetworking-plugins,procps,kmod,conntrack,ethtool,socat,ebtables,ca-certificates,libseccomp2,mount,util-linux,jq,bash
slim="$work/slim"
bootstrap "$slim" iptables,nftables,conntrack,ipset

# --- the node root: kind's files, the binaries, containerd ----------------------------
files="$kind_src/images/base/files"
install -d -m 0755 "$node/kind/bin" "$node/etc/kubernetes/manifests" "$node/etc/systemd/system/kubelet.service.d" "$node/opt/cni/bin" "$node/kind/manifests"
install -m 0755 "$files"/usr/local/bin/* "$node/usr/local/bin/"
install -m 0755 "$files"/kind/bin/* "$node/kind/bin/"
install -m 0644 "$files"/kind/README.txt "$node/kind/" 2>/dev/null || true
install -m 0644 "$files"/etc/crictl.yaml "$node/etc/"
install -m 0644 "$files"/etc/containerd/config.toml "$node/etc/containerd/config.toml"
install -m 0644 "$files"/etc/default/kubelet "$node/etc/default/kubelet"
install -m 0644 "$files"/etc/sysctl.d/* "$node/etc/sysctl.d/"
find "$files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$node/etc/systemd/system/" \;
install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$node/etc/systemd/system/kubelet.service.d/"
# kind's unit runs /usr/local/bin/containerd; Debian's is in /usr/bin.
ln -sf /usr/bin/containerd "$node/usr/local/bin/containerd"
for b in kubelet kubeadm kubectl; do install -m 0755 "$(path_of $b)" "$node/usr/bin/$b"; done
install -m 0755 "$(path_of crictl)" "$node/usr/local/bin/crictl"
for p in bridge host-local loopback portmap ptp; do install -m 0755 "$node/usr/lib/cni/$p" "$node/opt/cni/bin/$p"; done
echo "$k8s" > "$node/kind/version"

# kind's systemd trimming (images/base/Dockerfile).
find "$node/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$node"/lib/systemd/system/multi-user.target.wants/* "$node"/etc/systemd/system/*.wants/* \
  "$node"/lib/systemd/system/local-fs.target.wants/* "$node"/lib/systemd/system/sockets.target.wants/*udev* \
  "$node"/lib/systemd/system/sockets.target.wants/*initctl* "$node"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$node/etc/systemd/journald.conf"
chroot "$node" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$node" systemctl mask systemd-binfmt.service >/dev/null 2>&1

# The images kubeadm names, with etcd at the pinned version.
etcd_tag="${etcd_v#v}-0"
cat > "$work/kubeadm-images.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $k8s
etcd:
  local:
    imageTag: "$etcd_tag"
EOF
mapfile -t wanted < <("$(path_of kubeadm)" config images list --config "$work/kubeadm-images.yaml" 2>/dev/null)
[ ${#wanted[@]} -ge 6 ] || { log "kubeadm config images list named ${#wanted[@]} images: ${wanted[*]:-none}"; exit 1; }
image_named() { # COMPONENT: kubeadm's name for it
  local i
  for i in "${wanted[@]}"; do case "$i" in */"$1":*) echo "$i"; return;; esac; done
  log "kubeadm names no $1 image (it names: ${wanted[*]})"; exit 1
}
pause_ref=$(image_named pause)
coredns_ref=$(image_named coredns)
[ "${coredns_ref##*:}" = "$coredns_v" ] || {
  log "kubeadm $k8s deploys coredns ${coredns_ref##*:}, the lock pins $coredns_v: pin that version in tools.lock.toml"; exit 1; }

# containerd's CRI config (kind's), for this sandbox and this image's pause.
sed -i -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
  -e "s#sandbox_image = \".*\"#sandbox_image = \"$pause_ref\"#" "$node/etc/containerd/config.toml"
grep -q 'restrict_oom_score_adj = true' "$node/etc/containerd/config.toml" || { log "kind's containerd config has no restrict_oom_score_adj"; exit 1; }
chroot "$node" sh -c 'ctr oci spec | jq ".hooks.createContainer[.hooks.createContainer| length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}" | jq "del(.process.rlimits)" > /etc/containerd/cri-base.json'

# local-path-provisioner: kind's manifest with this image's provisioner and helper.
lpp_ref="lily-e2e/local-path-provisioner:$lpp_v"
helper_ref="lily-e2e/local-path-helper:$suite"
awk '/^const defaultStorageManifest = `/{on=1; next} on && /^`$/{exit} on{print}' "$kind_src/pkg/build/nodeimage/const_storage.go" \
  | sed -e "s#\` + storageProvisionerImage + \`#$lpp_ref#g" -e "s#\` + storageHelperImage + \`#$helper_ref#g" \
  > "$node/kind/manifests/default-storage.yaml"
grep -q "image: $lpp_ref" "$node/kind/manifests/default-storage.yaml" || { log "kind's storage manifest was not found in const_storage.go"; exit 1; }
grep -q '`' "$node/kind/manifests/default-storage.yaml" && { log "kind's storage manifest names an image this script does not replace"; exit 1; }

# --- component images ------------------------------------------------------------------
mkdir -p "$work/images"
component() { # REF ROOT [--change ...]
  local ref=$1 root=$2; shift 2
  tar -C "$root" -c . | docker import "$@" - "$ref" >/dev/null
  docker save "$ref" -o "$work/images/$(echo "$ref" | tr '/:' '__').tar"
}
static_root() { # NAME BINARY [DEST]: an empty root with one static binary
  local r="$work/roots/$1"
  install -d -m 0755 "$r/usr/local/bin" "$r/etc"
  install -d -m 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
  install -m 0755 "$2" "$r${3:-/usr/local/bin/$1}"
  echo "$r"
}
path_env=(--change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin')
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  component "$(image_named "$c")" "$(static_root "$c" "$(path_of "$c")")" "${path_env[@]}"
done
component "$(image_named etcd)" "$(static_root etcd "$(path_of etcd)")" "${path_env[@]}"
component "$coredns_ref" "$(static_root coredns "$(path_of coredns)" /coredns)" --change 'ENTRYPOINT ["/coredns"]'
gcc -Os -Wall -Werror -static -DVERSION="v${pause_ref##*:}" -o "$work/pause" "$k8s_src/build/pause/linux/pause.c"
component "$pause_ref" "$(static_root pause "$work/pause" /pause)" --change 'ENTRYPOINT ["/pause"]'
proxy_root="$work/roots/kube-proxy"
cp -a "$slim" "$proxy_root"
install -m 0755 "$(path_of kube-proxy)" "$proxy_root/usr/local/bin/kube-proxy"
component "$(image_named kube-proxy)" "$proxy_root" "${path_env[@]}"
component "$lpp_ref" "$(static_root local-path-provisioner "$(path_of local-path-provisioner)")" "${path_env[@]}"
component "$helper_ref" "$slim" "${path_env[@]}"
refs=("${wanted[@]}" "$lpp_ref" "$helper_ref")

# --- the node image, then its containerd's images ----------------------------------------
log "importing the node root"
tar -C "$node" -c . | docker import --change 'ENV container=docker' \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' - "lily-e2e/kind-node-build:$recipe" >/dev/null
cid=$(docker run -d --privileged --entrypoint sleep --label io.lily-e2e.build=node-image "lily-e2e/kind-node-build:$recipe" infinity)
docker exec "$cid" sh -c 'mkdir -p /run/containerd; nohup containerd >/tmp/containerd.log 2>&1 &'
for _ in $(seq 1 120); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 0.25; done
docker exec "$cid" ctr version >/dev/null 2>&1 || { log "containerd in the build container did not answer in 30s:"; docker exec "$cid" tail -n 20 /tmp/containerd.log >&2; exit 1; }
for t in "$work"/images/*.tar; do
  docker exec -i "$cid" ctr -n k8s.io images import --all-platforms --no-unpack --digests - < "$t" >/dev/null
done
loaded=$(docker exec "$cid" ctr -n k8s.io images ls -q)
for r in "${refs[@]}"; do
  case "$r" in */*/*|*.*/*) full=$r ;; *) full="docker.io/$r" ;; esac
  grep -qxF "$full" <<<"$loaded" || { log "$full is not in the node's containerd after import; it has: $(echo $loaded)"; exit 1; }
done
# Stopped, then waited for under a deadline (its parent, sleep, leaves it a zombie: not counted).
docker exec "$cid" sh -c 'pkill -x containerd; for _ in $(seq 1 100); do ps -o stat= -C containerd | grep -qv "^Z" || exit 0; sleep 0.1; done; echo "containerd did not stop within 10s" >&2; exit 1'
docker exec "$cid" rm -f /tmp/containerd.log
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$cid" "lily-e2e/kind-node-build:$recipe" >/dev/null
docker rm -f "$cid" >/dev/null; cid=""

# STOPSIGNAL and the labels: `docker import` and `docker commit` take neither STOPSIGNAL.
printf 'FROM lily-e2e/kind-node-build:%s\nSTOPSIGNAL SIGRTMIN+3\nLABEL io.lily-e2e.recipe=%s io.lily-e2e.kubernetes=%s io.lily-e2e.etcd-image-tag=%s io.lily-e2e.images="%s"\n' \
  "$recipe" "$recipe" "$k8s" "$etcd_tag" "${refs[*]}" | DOCKER_BUILDKIT=0 docker build -q -t "$image" - >/dev/null 2>"$work/build.log" || {
  log "docker build of the final layer failed:"; tail -n 20 "$work/build.log" >&2; exit 1; }
for r in "${refs[@]}"; do docker image rm "$r" >/dev/null 2>&1 || true; done

size=$(docker image inspect --format '{{.Size}}' "$image")
log "built $image in $(( $(date +%s) - start ))s, $(( size / 1024 / 1024 )) MiB; images: ${refs[*]}"
