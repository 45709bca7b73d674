#!/bin/sh
# build.sh OUT KERNEL_DEB BUSYBOX_DEB: the Linux test guest from Debian packages, nothing else.
# Writes OUT/vmlinuz and OUT/initrd.img (cpio, gzip): busybox, the virtio modules the cloud kernel
# builds as modules (with their dependencies from modules.dep), our udpecho and our scripts.
# The packages are unpacked with dpkg-deb -x into OUT/unpacked; nothing is installed on the host.
set -eu
out=$1 kernel_deb=$2 busybox_deb=$3
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out/unpacked" "$out/root"
mkdir -p "$out/unpacked/kernel" "$out/unpacked/busybox" "$out/root"
dpkg-deb -x "$kernel_deb" "$out/unpacked/kernel"
dpkg-deb -x "$busybox_deb" "$out/unpacked/busybox"
kver=$(ls "$out/unpacked/kernel/lib/modules")
busybox=$out/unpacked/busybox/bin/busybox
# The package's modules.dep is made at install time (depmod); make it here, in the unpacked tree.
"$busybox" depmod -b "$out/unpacked/kernel" "$kver"
moddir=$out/unpacked/kernel/lib/modules/$kver

root=$out/root
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/lib/modules/$kver"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# virtio_pci, virtio_net, virtio_blk and everything modules.dep says they need (ext4 is built in).
: > "$root/lib/modules/$kver/modules.dep"
for mod in virtio_pci virtio_net virtio_blk; do
    line=$(grep "/$mod.ko:" "$moddir/modules.dep")
    for ko in ${line%%:*} ${line#*:}; do
        [ -e "$root/lib/modules/$kver/$ko" ] && continue
        mkdir -p "$root/lib/modules/$kver/$(dirname "$ko")"
        cp "$moddir/$ko" "$root/lib/modules/$kver/$ko"
        grep "^$ko:" "$moddir/modules.dep" >> "$root/lib/modules/$kver/modules.dep"
    done
done
as --64 -o "$out/udpecho.o" "$here/udpecho.S"
ld -static -o "$root/bin/udpecho" "$out/udpecho.o"
for script in init qvwriter qvctl; do
    dest=$root/bin/$script
    [ "$script" = init ] && dest=$root/init
    cp "$here/$script" "$dest"
    chmod 755 "$dest"
done
cp "$out/unpacked/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
(cd "$root" && find . | sort | cpio -o -H newc --quiet) | gzip -6 > "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "linux guest: kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1)"
