package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// heldTo counts the TCP sockets that the processes of process group pgid
// hold to addr (an IPv4 ip:port), in any state but TIME_WAIT and CLOSE:
// established, or half-closed and waiting for the other side.
func heldTo(pgid int, addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return 0, fmt.Errorf("heldTo: %q is not an IPv4 ip:port", addr)
	}
	ip := ap.Addr().As4()
	// /proc/net/tcp prints the address as the host-order (little-endian
	// here) hex of the network-order bytes.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())

	inodes := map[string]bool{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		if groupOf(dir) != pgid {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[2] != want || fs[3] == "06" || fs[3] == "07" {
			continue
		}
		if inodes[fs[9]] {
			n++
		}
	}
	return n, sc.Err()
}

// groupOf returns the process group of /proc/<pid> (-1 if it is gone).
func groupOf(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	// after "pid (comm) ": state ppid pgrp ...
	fs := strings.Fields(s[i+1:])
	if len(fs) < 3 {
		return -1
	}
	g, err := strconv.Atoi(fs[2])
	if err != nil {
		return -1
	}
	return g
}
