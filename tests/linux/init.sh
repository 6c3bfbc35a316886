#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# /init of the Linux-guest test initramfs (see docs/linux-guest-tests.md).
# Loads the virtio modules, runs the workload named by vioport.test= on the kernel
# command line against /dev/vda, prints exactly one
#   VIOPORT-RESULT: PASS <name>        or        VIOPORT-RESULT: FAIL <name>: <reason>
# on the console (ttyS0) and powers off. Progress lines start with "VIOPORT-STEP:".
# Test data is in /data (put there by the test); sizes come from the command line.

/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

NAME=unknown
finish() {  # finish PASS|FAIL [reason]
  sync
  if [ "$1" = PASS ]; then
    echo "VIOPORT-RESULT: PASS $NAME"
  else
    echo "VIOPORT-RESULT: FAIL $NAME: $2"
  fi
  sleep 0.2  # let the UART drain before the machine goes away
  poweroff -f
  sleep 10
}
fail() { finish FAIL "$*"; }
step() { echo "VIOPORT-STEP: [$(cut -d" " -f1 /proc/uptime)] $*"; }

# vioport.KEY=VALUE from the kernel command line.
arg() { sed -n "s/.*vioport\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
NAME=$(arg test)
[ -n "$NAME" ] || fail "no vioport.test= on the kernel command line"

for m in $(cat /modules/order); do
  insmod "/modules/$m.ko" || fail "insmod $m failed"
done
case "$NAME" in
  net_* | vsock_*) ;;  # network and vsock workloads have no disk
  *)
    i=0
    while [ ! -b /dev/vda ]; do
      i=$((i + 1))
      [ $i -le 200 ] ||
        fail "/dev/vda did not appear within 20 s (virtio-blk probe failed?); dmesg: $(dmesg | tail -5 | tr '\n' '|')"
      sleep 0.1
    done
    ring=split  # feature bit 34 (VIRTIO_F_RING_PACKED) of what the driver negotiated
    [ "$(cut -c35 /sys/block/vda/device/features)" = 1 ] && ring=packed
    step "vda: $(cat /sys/block/vda/size) sectors, ro=$(cat /sys/block/vda/ro), queues=$(ls /sys/block/vda/mq | wc -l), ring=$ring"
    ;;
esac

MIB=1048576
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# verify_region FILE OFFSET_MIB: /dev/vda at OFFSET_MIB holds FILE, read with O_DIRECT.
verify_region() {
  n=$(($(stat -c %s "$1") / MIB))
  dd if=/dev/vda bs=1M skip="$2" count="$n" iflag=direct 2>/tmp/dd.err | cmp "$1" - ||
    fail "read-back of $1 at ${2} MiB differs: $(cat /tmp/dd.err | tr '\n' ' ')"
}
# write_region FILE OFFSET_MIB [BS]: O_DIRECT write then fsync.
write_region() {
  dd if="$1" of=/dev/vda bs="${3:-1M}" seek=$(($2 * MIB)) oflag=direct,seek_bytes conv=fsync,notrunc 2>/tmp/dd.err ||
    fail "writing $1 at ${2} MiB failed: $(cat /tmp/dd.err | tr '\n' ' ')"
}

test_verified_data() {
  step "writing $(stat -c %s /data/pattern) bytes"
  write_region /data/pattern 0
  drop_caches
  step "reading back"
  verify_region /data/pattern 0
  finish PASS
}

test_two_queues() {
  q=$(ls /sys/block/vda/mq | wc -l)
  [ "$q" = 2 ] || fail "expected 2 queues in /sys/block/vda/mq, found $q"
  [ "$(nproc)" -ge 2 ] || fail "guest has $(nproc) CPU(s); need 2 so both queues get a CPU"
  for h in 0 1; do step "hctx$h cpus: $(cat /sys/block/vda/mq/$h/cpu_list)"; done
  # blk-mq debugfs: hctxN/run counts the runs of hardware queue N (one or more per request).
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  dbg=/sys/kernel/debug/block/vda
  run0=$(cat $dbg/hctx0/run 2>/dev/null) run1=$(cat $dbg/hctx1/run 2>/dev/null)
  # Two writers, one per CPU (so one per queue), at different offsets.
  off_b=$(arg offb)
  (taskset 0x1 dd if=/data/a of=/dev/vda bs=64k oflag=direct conv=fsync,notrunc 2>/tmp/a.err; echo $? >/tmp/a.rc) &
  (taskset 0x2 dd if=/data/b of=/dev/vda bs=64k seek=$((off_b * MIB)) oflag=direct,seek_bytes conv=fsync,notrunc \
    2>/tmp/b.err; echo $? >/tmp/b.rc) &
  wait
  [ "$(cat /tmp/a.rc)" = 0 ] || fail "writer a failed: $(cat /tmp/a.err | tr '\n' ' ')"
  [ "$(cat /tmp/b.rc)" = 0 ] || fail "writer b failed: $(cat /tmp/b.err | tr '\n' ' ')"
  if [ -n "$run0" ] && [ -n "$run1" ]; then
    d0=$(($(cat $dbg/hctx0/run) - run0)) d1=$(($(cat $dbg/hctx1/run) - run1))
    step "queue runs during the writes: hctx0 $d0, hctx1 $d1"
    # Each writer issues 128 requests of 64 KiB; each must have gone through its CPU's queue.
    [ "$d0" -ge 100 ] && [ "$d1" -ge 100 ] ||
      fail "both queues should have carried a writer: hctx0 ran $d0 times, hctx1 $d1"
  else
    step "no blk-mq debugfs: per-queue use not checked"
  fi
  drop_caches
  verify_region /data/a 0
  verify_region /data/b "$off_b"
  finish PASS
}

# The host grows the disk while the guest runs (vios blk_resize): the config
# interrupt makes virtio_blk re-read the capacity; the new space takes data.
test_resize() {
  old=$(arg oldsectors) new=$(arg newsectors)
  [ "$(cat /sys/block/vda/size)" = "$old" ] || fail "vda has $(cat /sys/block/vda/size) sectors, expected $old"
  echo "VIOPORT-MARK: resize-now"
  i=0
  while [ "$(cat /sys/block/vda/size)" != "$new" ]; do
    i=$((i + 1))
    [ $i -le 1200 ] || fail "vda still has $(cat /sys/block/vda/size) sectors 120 s after the resize, expected $new"
    sleep 0.1
  done
  step "vda grew to $new sectors: $(dmesg | grep -i 'new size\|capacity change' | tail -1)"
  write_region /data/pattern $((old * 512 / MIB))
  drop_caches
  verify_region /data/pattern $((old * 512 / MIB))
  finish PASS
}

test_read_only() {
  [ "$(cat /sys/block/vda/ro)" = 1 ] || fail "/sys/block/vda/ro is $(cat /sys/block/vda/ro), expected 1"
  if dd if=/dev/zero of=/dev/vda bs=4k count=16 oflag=direct conv=fsync,notrunc 2>/tmp/dd.err; then
    fail "a write to the read-only disk succeeded"
  fi
  step "write refused as expected: $(cat /tmp/dd.err | tr '\n' ' ')"
  if echo x | dd of=/dev/vda bs=512 count=1 conv=sync,notrunc,fsync 2>/tmp/dd.err; then
    fail "a buffered write to the read-only disk succeeded"
  fi
  drop_caches
  verify_region /data/pattern 0
  n=$(($(stat -c %s /data/pattern) / MIB))
  a=$(dd if=/dev/vda bs=1M count=$n iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
  b=$(sha256sum </data/pattern | cut -d' ' -f1)
  step "sha256 device $a file $b"
  [ "$a" = "$b" ] || fail "sha256 of the disk ($a) differs from the pattern ($b)"
  finish PASS
}

test_fs_create() {
  mke2fs /dev/vda >/tmp/mk.log 2>&1 || fail "mke2fs failed: $(tr '\n' ' ' </tmp/mk.log)"
  mount -t ext2 /dev/vda /mnt 2>/tmp/m.err || fail "mount failed: $(cat /tmp/m.err)"
  mkdir -p /mnt/dir/sub || fail "mkdir failed"
  cp /data/a /mnt/a.bin && cp /data/b /mnt/dir/sub/b.bin && echo "hello from boot 1" >/mnt/dir/hello.txt ||
    fail "copying files failed"
  sync
  umount /mnt || fail "umount failed"
  sync
  step "filesystem written"
  finish PASS
}

test_fs_verify() {
  drop_caches
  mount -t ext2 -o ro /dev/vda /mnt 2>/tmp/m.err || fail "mount failed: $(cat /tmp/m.err)"
  cmp /data/a /mnt/a.bin || fail "a.bin differs"
  cmp /data/b /mnt/dir/sub/b.bin || fail "dir/sub/b.bin differs"
  [ "$(cat /mnt/dir/hello.txt)" = "hello from boot 1" ] || fail "hello.txt holds '$(cat /mnt/dir/hello.txt)'"
  step "files: $(cd /mnt && find . | sort | tr '\n' ' ')"
  umount /mnt || fail "umount failed"
  finish PASS
}

# write_slices W BS CHUNK WHAT: /data/pattern to /dev/vda at the same offsets
# by W writers, each its own slice, O_DIRECT requests of BS and a flush every
# CHUNK bytes (one dd with conv=fsync per chunk); fails naming WHAT and the
# writer if any dd fails.
write_slices() {
  ws_total=$(stat -c %s /data/pattern)
  ws_slice=$((ws_total / $1))
  i=0
  while [ $i -lt "$1" ]; do
    (
      rc=0 off=$((i * ws_slice)) end=$(((i + 1) * ws_slice))
      while [ $off -lt $end ] && [ $rc = 0 ]; do
        dd if=/data/pattern of=/dev/vda bs="$2" skip=$off seek=$off count="$3" \
          iflag=skip_bytes,count_bytes oflag=direct,seek_bytes conv=fsync,notrunc 2>/tmp/w$i.err
        rc=$? off=$((off + $3))
      done
      echo $rc >/tmp/w$i.rc
    ) &
    i=$((i + 1))
  done
  wait
  i=0
  while [ $i -lt "$1" ]; do
    [ "$(cat /tmp/w$i.rc)" = 0 ] || fail "$4writer $i failed: $(tr '\n' ' ' </tmp/w$i.err)"
    i=$((i + 1))
  done
}

test_reconnect() {
  # W writers, each one slice of the pattern at its own offset, so up to W requests are in
  # flight (and may complete out of order) when the test kills the backend. With
  # vioport.chunk=N each writer also flushes every N bytes (one dd with conv=fsync per
  # chunk), so the backend spends part of its time in flushes that the kill can interrupt.
  bs=$(arg bs) w=$(arg writers) chunk=$(arg chunk)
  bs=${bs:-16k} w=${w:-1}
  total=$(stat -c %s /data/pattern)
  slice=$((total / w))
  chunk=${chunk:-$slice}
  step "writing $total bytes: $w writers, $bs requests, a flush every $chunk bytes"
  echo "VIOPORT-MARK: writing"
  write_slices "$w" "$bs" "$chunk" ""
  step "write done"
  drop_caches
  verify_region /data/pattern 0
  finish PASS
}

# Verified I/O for as long as the host replaces the back-end under it (live
# upgrade): pass after pass, the region is zeroed, written with the pattern by
# 4 writers (O_DIRECT, a flush every 512 KiB) and read back after dropping the
# caches, so a write lost in any pass shows as zeros. At least 2 passes, then
# more until vioport.seconds (default 20) have gone by.
test_upgrade() {
  secs=$(arg seconds) w=4 chunk=524288
  secs=${secs:-20}
  total=$(stat -c %s /data/pattern)
  start=$(cut -d. -f1 /proc/uptime) n=0
  echo "VIOPORT-MARK: writing"
  while [ $n -lt 2 ] || [ $(($(cut -d. -f1 /proc/uptime) - start)) -lt "$secs" ]; do
    n=$((n + 1))
    dd if=/dev/zero of=/dev/vda bs=1M count=$((total / MIB)) oflag=direct conv=fsync,notrunc 2>/tmp/z.err ||
      fail "pass $n: zeroing failed: $(tr '\n' ' ' </tmp/z.err)"
    write_slices "$w" 64k "$chunk" "pass $n: "
    drop_caches
    verify_region /data/pattern 0
    step "pass $n written and verified"
  done
  echo "VIOPORT-MARK: write done"
  finish PASS
}

# Reads for as long as the host measures interrupts with and without
# coalescing: R readers (vioport.readers, default 4), each reading its slice of
# the disk 4 KiB at a time with O_DIRECT and comparing it with the pattern,
# pass after pass, until vioport.seconds (default 8) have gone by.
test_coalesce() {
  secs=$(arg seconds) r=$(arg readers)
  secs=${secs:-8} r=${r:-4}
  total=$(stat -c %s /data/pattern)
  slice=$((total / r))
  i=0
  while [ $i -lt "$r" ]; do
    dd if=/data/pattern of=/tmp/s$i bs=4k skip=$((i * slice / 4096)) count=$((slice / 4096)) 2>/dev/null
    i=$((i + 1))
  done
  start=$(cut -d. -f1 /proc/uptime)
  echo "VIOPORT-MARK: reading"
  i=0
  while [ $i -lt "$r" ]; do
    (
      n=0
      while [ $(($(cut -d. -f1 /proc/uptime) - start)) -lt "$secs" ]; do
        dd if=/dev/vda bs=4k skip=$((i * slice / 4096)) count=$((slice / 4096)) iflag=direct 2>/tmp/r$i.err |
          cmp -s - /tmp/s$i || { echo "pass $n differs from the pattern" >/tmp/r$i.rc; exit 0; }
        n=$((n + 1))
      done
      echo 0 >/tmp/r$i.rc
      echo "$n" >/tmp/r$i.n
    ) &
    i=$((i + 1))
  done
  wait
  i=0
  while [ $i -lt "$r" ]; do
    [ "$(cat /tmp/r$i.rc)" = 0 ] || fail "reader $i: $(cat /tmp/r$i.rc) $(tr '\n' ' ' </tmp/r$i.err)"
    step "reader $i: $(cat /tmp/r$i.n) passes verified"
    i=$((i + 1))
  done
  finish PASS
}

# ---- network workloads (virtio_net; vioport.addr=, vioport.peer=, vioport.queues=) ----

# net_up ADDR: eth0 up with ADDR/24 (and the queue count checked when given).
net_up() {
  i=0
  while [ ! -d /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ $i -le 200 ] || fail "eth0 did not appear within 20 s; dmesg: $(dmesg | tail -5 | tr '\n' '|')"
    sleep 0.1
  done
  ip link set lo up
  ip link set eth0 up || fail "ip link set eth0 up failed"
  ip addr add "$1/24" dev eth0 || fail "ip addr add $1/24 failed"
  step "eth0 $1: mac $(cat /sys/class/net/eth0/address), mtu $(cat /sys/class/net/eth0/mtu), queues $(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
  if [ "$(arg standby)" = 1 ]; then
    # net failover (STANDBY): eth0 is the failover master, the virtio_net
    # device its standby slave (phys_port_name "sby").
    i=0
    sby=""
    while [ -z "$sby" ]; do
      for d in /sys/class/net/*; do
        [ "$(cat "$d/phys_port_name" 2>/dev/null)" = sby ] && sby=${d##*/}
      done
      [ -n "$sby" ] && break
      i=$((i + 1))
      [ $i -le 100 ] || fail "no standby netdev (phys_port_name sby): $(ls /sys/class/net | tr '\n' ' ')"
      sleep 0.1
    done
    m=$(basename "$(readlink "/sys/class/net/$sby/master")")
    [ "$m" = eth0 ] || fail "standby $sby has master '$m', not eth0"
    step "net failover: $sby (standby) under eth0, mac $(cat "/sys/class/net/$sby/address")"
  fi
  q=$(arg queues)
  if [ -n "$q" ]; then
    n=$(ls /sys/class/net/eth0/queues | grep -c rx-)
    [ "$n" = "$q" ] || fail "expected $q receive queues on eth0, found $n"
  fi
}

# wait_ping ADDR TRIES: until ADDR answers (one try a second).
wait_ping() {
  i=0
  until ping -c 1 -W 1 "$1" >/tmp/ping.out 2>&1; do
    i=$((i + 1))
    [ $i -le "$2" ] || fail "no answer from $1 after $2 tries: $(tr '\n' ' ' </tmp/ping.out)"
  done
}

# recv_tcp PORT FILE [HOST]: one TCP stream into FILE, listening on PORT or
# connecting to HOST:PORT; returns when the peer closes.
recv_tcp() {
  if [ -n "$3" ]; then
    (sleep 600 | nc "$3" "$1" >"$2") &
  else
    (sleep 600 | nc -l -p "$1" >"$2") &
  fi
  RECV_PID=$!
  RECV_FILE=$2
}
recv_done() {  # recv_done SECONDS: waits for the recv_tcp stream to end
  i=0
  # Its nc may not have started yet (a loaded host): until it shows, or
  # its file has bytes (it started and ended already), or 5 s.
  while [ -z "$(ps -o pid,args | grep -v grep | grep ' nc ')" ] && [ ! -s "$RECV_FILE" ] && [ $i -lt 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  i=0
  while [ -n "$(ps -o pid,args | grep -v grep | grep ' nc ')" ]; do
    i=$((i + 1))
    [ $i -le $(($1 * 10)) ] || fail "the TCP stream did not end within $1 s"
    sleep 0.1
  done
  kill $RECV_PID 2>/dev/null
}

# The host is at vioport.peer= behind vios's tap uplink: ping, then a TCP
# stream each way, checked byte for byte here (/data/back) and by the test (pattern).
test_net_host() {
  peer=$(arg peer)
  net_up "$(arg addr)"
  wait_ping "$peer" 60
  ping -c 5 -i 0.2 "$peer" >/tmp/ping.out 2>&1 || fail "ping $peer: $(tr '\n' ' ' </tmp/ping.out)"
  step "ping: $(grep -E 'transmitted|round-trip' /tmp/ping.out | tr '\n' ' ')"
  nc "$peer" 5001 </data/pattern || fail "sending to $peer:5001 failed"
  step "sent $(stat -c %s /data/pattern) bytes, sha256 $(sha256sum </data/pattern | cut -d' ' -f1)"
  recv_tcp 5002 /tmp/back "$peer"
  recv_done 120
  cmp /data/back /tmp/back || fail "the stream from $peer:5002 ($(stat -c %s /tmp/back) bytes) differs from /data/back"
  step "received $(stat -c %s /tmp/back) bytes, sha256 $(sha256sum </tmp/back | cut -d' ' -f1)"
  finish PASS
}

# Two guests on one switch: the listener (vioport.role=listen) takes a stream
# and checks it; the sender pings it, then sends /data/pattern.
test_net_pair() {
  peer=$(arg peer)
  if [ "$(arg role)" = listen ]; then
    recv_tcp 5003 /tmp/in
    net_up "$(arg addr)"
    wait_ping "$peer" 180
    recv_done 300
    cmp /data/pattern /tmp/in || fail "the stream from $peer ($(stat -c %s /tmp/in) bytes) differs from /data/pattern"
    step "received $(stat -c %s /tmp/in) bytes from $peer, sha256 $(sha256sum </tmp/in | cut -d' ' -f1)"
  else
    net_up "$(arg addr)"
    wait_ping "$peer" 180
    i=0
    until nc "$peer" 5003 </data/pattern 2>/tmp/nc.err; do
      i=$((i + 1))
      [ $i -le 60 ] || fail "connecting to $peer:5003 failed: $(cat /tmp/nc.err)"
      sleep 1
    done
    step "sent $(stat -c %s /data/pattern) bytes to $peer"
  fi
  finish PASS
}

# Peers at vioport.peers=A,B,...: to each in turn, ping, then a stream there
# (/data/pattern, checked by the test) and one back (checked here against
# /data/back).
test_net_peers() {
  net_up "$(arg addr)"
  for peer in $(arg peers | tr ',' ' '); do
    wait_ping "$peer" 60
    nc "$peer" 5001 </data/pattern || fail "sending to $peer:5001 failed"
    recv_tcp 5002 /tmp/back "$peer"
    recv_done 120
    cmp /data/back /tmp/back || fail "the stream from $peer:5002 ($(stat -c %s /tmp/back) bytes) differs from /data/back"
    step "$peer: sent $(stat -c %s /data/pattern) bytes, received $(stat -c %s /tmp/back) bytes, verified"
  done
  finish PASS
}

# ---- vsock workloads (vmw_vsock_virtio_transport; /bin/vsock_peer, tests/linux/vsock_peer.c) ----
# Ports and seeds are fixed here and in linux_guest_test.cc (the host's ends);
# sizes and the CID come from the command line (vioport.cid=, vioport.bytes=, ...).

# vsock_up: the guest's vsock device probed, its CID the one vios was given, and
# the features it negotiated printed (bit 1: SEQPACKET).
vsock_up() {
  i=0
  until [ -c /dev/vsock ] && ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio* >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -le 200 ] || fail "no virtio-vsock device within 20 s; dmesg: $(dmesg | tail -5 | tr '\n' '|')"
    sleep 0.1
  done
  dev=$(ls -d /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio* | head -1)
  VSOCK_FEATURES=$(cat "$dev/features")
  step "vsock device ${dev##*/}: features $VSOCK_FEATURES"
  vsock_peer cid >/tmp/cid.out 2>&1 || fail "$(cat /tmp/cid.out)"
  cid=$(sed -n 's/.* OK cid=//p' /tmp/cid.out)
  [ "$cid" = "$(arg cid)" ] || fail "the guest's CID is '$cid', vios was given $(arg cid)"
  step "local CID $cid"
}
# vsock_seqpacket_offered: 0 when the device negotiated VIRTIO_VSOCK_F_SEQPACKET.
vsock_seqpacket_offered() { [ "$(echo "$VSOCK_FEATURES" | cut -c2)" = 1 ]; }

# The data tests in one boot: two guest listeners the host connects to (the
# test's own client on 6001, socat on 6002), then, one after the other, a
# stream to the host's listener on 5001, SEQPACKET messages echoed on 5002
# and N concurrent connections echoed on 5003.
test_vsock_data() {
  vsock_up
  b=$(arg bytes)
  vsock_peer stream-listen h2g 6001 "$b" 0x62 "$b" 0x61 &
  h2g=$!
  vsock_peer stream-listen socat 6002 "$b" 0x64 "$b" 0x63 &
  soc=$!
  vsock_peer stream-connect g2h 2 5001 "$b" 0x51 "$b" 0x52 || fail "guest-to-host stream"
  if vsock_seqpacket_offered; then
    vsock_peer seq-connect seq 2 5002 "$(arg messages)" 0x53 || fail "SEQPACKET"
  else
    echo "VSOCK-RESULT: seq SKIPPED: the device did not negotiate SEQPACKET (features $VSOCK_FEATURES)"
  fi
  vsock_peer many-connect many 2 5003 "$(arg conns)" "$(arg connbytes)" 0x1000 || fail "$(arg conns) connections"
  wait $h2g || fail "host-initiated stream (6001)"
  wait $soc || fail "host-initiated stream from socat (6002)"
  finish PASS
}

# Connections that stream until the test kills QEMU: three to the host's
# listener on 5101 and two from the host (6101, 6102), each sending and
# verifying 1 GiB (far more than moves before the kill).
test_vsock_flood() {
  vsock_up
  big=1073741824
  vsock_peer stream-listen in1 6101 $big 0x73 $big 0x74 &
  vsock_peer stream-listen in2 6102 $big 0x73 $big 0x74 &
  for i in 1 2 3; do
    vsock_peer stream-connect out$i 2 5101 $big 0x71 $big 0x72 &
  done
  echo "VIOPORT-MARK: flooding"
  wait
  fail "the streams ended before the guest was killed"
}

# One stream to the host's listener on 5101 (after another guest on the same
# device was killed).
test_vsock_again() {
  vsock_up
  vsock_peer stream-connect again 2 5101 "$(arg bytes)" 0x75 "$(arg bytes)" 0x76 || fail "guest-to-host stream"
  finish PASS
}

# Sibling guests in the guest's hub group, at the CIDs in vioport.peers=
# (vioguest processes over other transports), all at once: the guest
# connects to each one's listener on 7000 (guest sends seed 128+CID, the
# peer 144+CID) while its own listener on 7001 takes one connection from each
# (the peer sends 160+CID, the guest 176+CID). vioport.bytes= each way on each.
test_vsock_peers() {
  vsock_up
  b=$(arg bytes)
  peers=$(arg peers | tr ',' ' ')
  vsock_peer stream-serve in 7001 "$(echo $peers | wc -w)" "$b" 176 "$b" 160 &
  srv=$!
  pids=""
  for c in $peers; do
    vsock_peer stream-connect "out$c" "$c" 7000 "$b" $((128 + c)) "$b" $((144 + c)) &
    pids="$pids $!"
  done
  for p in $pids; do
    wait "$p" || fail "a stream to a peer on 7000 failed"
  done
  wait $srv || fail "a stream from a peer to 7001 failed"
  finish PASS
}

case "$NAME" in
  vsock_peers) test_vsock_peers ;;
  vsock_data) test_vsock_data ;;
  vsock_again) test_vsock_again ;;
  vsock_flood) test_vsock_flood ;;
  net_host) test_net_host ;;
  net_peers) test_net_peers ;;
  net_pair) test_net_pair ;;
  verified_data) test_verified_data ;;
  resize) test_resize ;;
  two_queues) test_two_queues ;;
  read_only) test_read_only ;;
  fs_create) test_fs_create ;;
  fs_verify) test_fs_verify ;;
  reconnect) test_reconnect ;;
  upgrade) test_upgrade ;;
  coalesce) test_coalesce ;;
  *) fail "unknown test '$NAME'" ;;
esac
fail "workload returned without a result"
