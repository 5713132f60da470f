package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// clockTick is the length of one USER_HZ tick, the unit of utime and stime
// in /proc/<pid>/stat (100 Hz on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// procStat is what the bench reads from /proc/<pid>/stat.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64 // clock ticks
}

// parseStat parses the contents of /proc/<pid>/stat. The command name (field
// 2) may hold spaces and parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return procStat{}, errors.New("stat: no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, so f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat: %d fields after the command name, want at least 15", len(f))
	}
	var s procStat
	var err error
	if s.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("stat: ppid: %w", err)
	}
	for j, p := range []*int64{&s.utime, &s.stime, &s.cutime, &s.cstime} {
		if *p, err = strconv.ParseInt(f[11+j], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("stat: field %d: %w", 14+j, err)
		}
	}
	return s, nil
}

// memInfo is a process's memory in bytes: VmRSS, RssAnon and RssFile from
// /proc/<pid>/status, Pss from /proc/<pid>/smaps_rollup.
type memInfo struct {
	RSS, RssAnon, RssFile, Pss float64
}

// parseKBFields reads "Name:   123 kB" lines and returns the named values in
// bytes. Names not present stay absent from the map.
func parseKBFields(b []byte, names ...string) map[string]float64 {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		name := strings.TrimSuffix(f[0], ":")
		if !want[name] {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		if len(f) >= 3 && f[2] == "kB" {
			v *= 1024
		}
		out[name] = v
	}
	return out
}

// sample is one reading of a process tree (a proxy, and nginx's workers).
type sample struct {
	CPU time.Duration // utime+stime of every process in the tree, plus reaped children's
	Mem memInfo       // summed over the tree (RSS counts shared pages once per process)
	FDs int           // open files, summed over the tree
	N   int           // processes in the tree
}

// readSample reads pid and its descendants.
func readSample(pid int) (sample, error) {
	pids, err := procTree(pid)
	if err != nil {
		return sample{}, err
	}
	var s sample
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			if p == pid {
				return sample{}, fmt.Errorf("read stat of %d: %w", p, err)
			}
			continue // a worker that just exited
		}
		st, err := parseStat(b)
		if err != nil {
			return sample{}, fmt.Errorf("pid %d: %w", p, err)
		}
		s.CPU += time.Duration(st.utime+st.stime+st.cutime+st.cstime) * clockTick
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p)); err == nil {
			m := parseKBFields(b, "VmRSS", "RssAnon", "RssFile")
			s.Mem.RSS += m["VmRSS"]
			s.Mem.RssAnon += m["RssAnon"]
			s.Mem.RssFile += m["RssFile"]
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p)); err == nil {
			s.Mem.Pss += parseKBFields(b, "Pss")["Pss"]
		}
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p)); err == nil {
			s.FDs += len(ents)
		}
		s.N++
	}
	return s, nil
}

// procTree returns pid and all its descendants, from the kernel's
// /proc/<pid>/task/<tid>/children lists.
func procTree(pid int) ([]int, error) {
	out := []int{pid}
	for i := 0; i < len(out) && i < 1000; i++ {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("process %d: %w", pid, err)
			}
			continue
		}
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], t.Name()))
			if err != nil {
				continue
			}
			for _, c := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(c); err == nil {
					out = append(out, n)
				}
			}
		}
	}
	return out, nil
}

// selfCPU is this process's CPU time so far (all threads).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// setAffinity pins every thread of pid to cpus (nil: every CPU the machine
// has). Threads created later inherit the mask of the thread creating them.
func setAffinity(pid int, cpus []int) error {
	var mask [16]uint64 // 1024 CPUs, the kernel's default cpumask size
	if cpus == nil {
		for c := range numCPU() {
			mask[c/64] |= 1 << (c % 64)
		}
	}
	for _, c := range cpus {
		mask[c/64] |= 1 << (c % 64)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Errorf("affinity: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask)))
		if e != 0 && e != syscall.ESRCH {
			return fmt.Errorf("affinity of thread %d: %w", tid, e)
		}
	}
	return nil
}

// numCPU counts the machine's online CPUs (not this process's affinity).
func numCPU() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 1
	}
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(r, "-")
		a, err1 := strconv.Atoi(lo)
		z := a
		var err2 error
		if ok {
			z, err2 = strconv.Atoi(hi)
		}
		if err1 == nil && err2 == nil {
			n = max(n, z+1)
		}
	}
	return max(n, 1)
}

// parseCPUBusy returns the busy time (user, nice, system, irq, softirq,
// steal) of the "cpu" line of /proc/stat, all CPUs together.
func parseCPUBusy(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line first")
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return time.Duration(busy) * clockTick, nil
}

// machineBusy is the CPU time every process on the machine has used.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	d, _ := parseCPUBusy(b)
	return d
}
