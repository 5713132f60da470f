// Package deploy_test checks the deployment files in deploy/: the
// halo-agent static pod, its Containerfile, its systemd unit and the
// keepalived configuration for load-balancer nodes. The checks that run a
// tool (systemd-analyze, keepalived, shellcheck, curl, bash) skip when it
// is not installed, except in CI (CI set, as CI services and .ci/run set
// it), where a missing tool fails them: a check CI skips can never fail.
package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// agentFlags are halo-agent's flags, each with whether it takes a value (so
// that the pod's and the unit's arguments can be parsed). Every flag the
// deploy files pass must be here. The real flag set is newFlagSet in
// agent/cmd/halo-agent (package main, not importable); keep this list equal
// to it. That package's TestDocumentedFlagsExist checks these files against
// the real flags too.
var agentFlags = map[string]bool{
	"server":             true,
	"cluster":            true,
	"node":               true,
	"sotw":               false,
	"tls-ca":             true,
	"tls-cert":           true,
	"tls-key":            true,
	"tls-server-name":    true,
	"cache-dir":          true,
	"fallback-backends":  true,
	"fallback-listen":    true,
	"bootstrap-backends": true, // deprecated name of fallback-backends
	"bootstrap-listen":   true, // deprecated name of fallback-listen
	"admin-listen":       true,
	"log-level":          true,
	"log-format":         true,
	"version":            false,
}

// Defaults of the agent flags the checks below depend on.
const (
	defaultAdminListen    = "127.0.0.1:18002"
	defaultCacheDir       = "/var/lib/halo-agent"
	defaultFallbackListen = "127.0.0.1:6443"
)

// inCI says whether the tests run in CI: CI is set and not false.
func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// skipOrFail skips the test outside CI and fails it in CI, where every
// check must run (.ci/run installs every tool).
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI: "+format+"; CI must run this check", args...)
	}
	t.Skipf(format, args...)
}

// tool is the path of the named program on PATH; without it the test
// skips, or in CI fails.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, "%s not installed", name)
	}
	return p
}

// repoPath is rel (slash-separated, from the repository root) on disk.
func repoPath(t *testing.T, rel string) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", filepath.FromSlash(rel))
}

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// flagRE finds --flag in text (after a start of line, blank, quote or
// bracket, so that a--b or a URL path does not count).
var flagRE = regexp.MustCompile("(?:^|[\\s\"'(`\\[])--([a-z][a-z0-9-]*)")

func flagsIn(text string) []string {
	var out []string
	for _, m := range flagRE.FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}

func checkFlags(t *testing.T, where, text string) {
	t.Helper()
	for _, f := range flagsIn(text) {
		if _, ok := agentFlags[f]; !ok {
			t.Errorf("%s passes --%s, which halo-agent does not have", where, f)
		}
	}
}

// parseArgs splits halo-agent arguments into flag → value, in either the
// --flag=value or the --flag value form.
func parseArgs(t *testing.T, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			t.Errorf("argument %q is not a --flag (halo-agent takes no positional arguments)", a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		takesValue, ok := agentFlags[name]
		switch {
		case !ok:
			t.Errorf("argument %q: halo-agent has no flag --%s", a, name)
			continue
		case takesValue && !hasValue:
			if i+1 == len(args) {
				t.Errorf("argument %q has no value", a)
				continue
			}
			i++
			value = args[i]
		case !takesValue && hasValue:
			t.Errorf("argument %q: --%s takes no value", a, name)
		}
		if _, dup := out[name]; dup {
			t.Errorf("--%s is given twice", name)
		}
		out[name] = value
	}
	return out
}

func loadPod(t *testing.T) *corev1.Pod {
	t.Helper()
	data := repoFile(t, "deploy/kubernetes/halo-agent.yaml")
	if regexp.MustCompile(`(?m)^---`).MatchString(data) {
		t.Fatal("halo-agent.yaml must hold one document (kubelet reads one pod per file)")
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict([]byte(data), &pod); err != nil {
		t.Fatalf("halo-agent.yaml: %v", err)
	}
	return &pod
}

// TestStaticPod checks the static pod manifest: a host-network pod in
// kube-system like Kubespray's nginx-proxy, with only halo-agent flags,
// probes on the admin listener, and the cache on a writable hostPath.
func TestStaticPod(t *testing.T) {
	pod := loadPod(t)
	if pod.APIVersion != "v1" || pod.Kind != "Pod" {
		t.Errorf("apiVersion/kind = %s/%s, want v1/Pod", pod.APIVersion, pod.Kind)
	}
	if pod.Name != "halo-agent" || pod.Namespace != "kube-system" {
		t.Errorf("name = %s/%s, want kube-system/halo-agent", pod.Namespace, pod.Name)
	}
	spec := pod.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork is not true: the agent must listen on the node's 127.0.0.1:6443")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", spec.PriorityClassName)
	}
	// Cluster DNS needs the apiserver path this pod provides.
	if spec.DNSPolicy != corev1.DNSDefault {
		t.Errorf("dnsPolicy = %q, want Default (the host's resolver)", spec.DNSPolicy)
	}
	if len(spec.InitContainers) > 0 || len(spec.Containers) != 1 {
		t.Fatalf("want exactly one container and no init containers, got %d and %d", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]

	t.Run("image", func(t *testing.T) {
		repo, tag, ok := strings.Cut(c.Image, ":")
		if repo != "ghcr.io/halolb/halo-agent" || !ok || tag == "" || tag == "latest" {
			t.Errorf("image = %q, want ghcr.io/halolb/halo-agent:<version>", c.Image)
		}
		if !strings.Contains(repoFile(t, "deploy/kubernetes/Containerfile"), " -t "+c.Image+" ") {
			t.Errorf("the Containerfile's build command does not tag %s", c.Image)
		}
		// The image's ENTRYPOINT is the agent; a command would replace it.
		if len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/halo-agent"}) {
			t.Errorf("command = %q, want none (the image's ENTRYPOINT) or [/halo-agent]", c.Command)
		}
	})

	args := parseArgs(t, c.Args)
	flag := func(name, def string) string {
		if v, ok := args[name]; ok {
			return v
		}
		return def
	}

	t.Run("args", func(t *testing.T) {
		// $(VAR) in args expands only from the container's env.
		env := map[string]bool{}
		for _, e := range c.Env {
			env[e.Name] = true
		}
		for _, a := range c.Args {
			for _, m := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(a, -1) {
				if !env[m[1]] {
					t.Errorf("argument %q uses $(%s), which the container's env does not define", a, m[1])
				}
			}
		}
		for _, name := range []string{"server", "cluster", "node", "fallback-backends"} {
			if args[name] == "" {
				t.Errorf("--%s is not set", name)
			}
		}
		for _, hp := range strings.Split(args["fallback-backends"], ",") {
			if _, err := netip.ParseAddrPort(hp); err != nil {
				t.Errorf("--fallback-backends: %v", err)
			}
		}
		// No capabilities: every listener the pod binds is >= 1024.
		for _, name := range []string{"fallback-listen", "admin-listen"} {
			ap, err := netip.ParseAddrPort(flag(name, map[string]string{
				"fallback-listen": defaultFallbackListen, "admin-listen": defaultAdminListen}[name]))
			if err != nil {
				t.Errorf("--%s: %v", name, err)
			} else if ap.Port() < 1024 {
				t.Errorf("--%s port %d needs CAP_NET_BIND_SERVICE, which the pod drops", name, ap.Port())
			}
		}
	})

	t.Run("probes", func(t *testing.T) {
		admin, err := netip.ParseAddrPort(flag("admin-listen", defaultAdminListen))
		if err != nil {
			t.Fatalf("--admin-listen: %v", err)
		}
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
			path  string
		}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s is not an httpGet probe", p.kind)
				continue
			}
			g := p.probe.HTTPGet
			scheme := g.Scheme
			if scheme == "" {
				scheme = corev1.URISchemeHTTP
			}
			if g.Path != p.path || g.Host != admin.Addr().String() || g.Port.IntValue() != int(admin.Port()) ||
				scheme != corev1.URISchemeHTTP {
				t.Errorf("%s = %s://%s:%s%s, want HTTP://%s%s (the admin listener)", p.kind, scheme, g.Host, g.Port.String(), g.Path, admin, p.path)
			}
		}
	})

	t.Run("volumes", func(t *testing.T) {
		vols := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			if v.HostPath == nil {
				t.Errorf("volume %s is not a hostPath (a static pod cannot use API objects)", v.Name)
			} else if !filepath.IsAbs(v.HostPath.Path) {
				t.Errorf("volume %s: hostPath %q is not absolute", v.Name, v.HostPath.Path)
			}
			vols[v.Name] = v
		}
		mounted := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("volumeMount %s names no volume", m.Name)
			}
			mounted[m.Name] = true
		}
		for name := range vols {
			if !mounted[name] {
				t.Errorf("volume %s is not mounted", name)
			}
		}
		// mountFor is the mount that holds path, or nil.
		mountFor := func(path string) *corev1.VolumeMount {
			var best *corev1.VolumeMount
			for i, m := range c.VolumeMounts {
				if (path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")) &&
					(best == nil || len(m.MountPath) > len(best.MountPath)) {
					best = &c.VolumeMounts[i]
				}
			}
			return best
		}
		cache := flag("cache-dir", defaultCacheDir)
		m := mountFor(cache)
		switch {
		case m == nil:
			t.Errorf("--cache-dir %s is on no volume: the cache would not survive a restart (and the root filesystem is read-only)", cache)
		case m.ReadOnly:
			t.Errorf("--cache-dir %s is on read-only mount %s", cache, m.Name)
		case vols[m.Name].HostPath == nil:
		case vols[m.Name].HostPath.Type == nil || *vols[m.Name].HostPath.Type != corev1.HostPathDirectoryOrCreate:
			t.Errorf("volume %s (--cache-dir) should be a DirectoryOrCreate hostPath", m.Name)
		}
		for _, name := range []string{"tls-ca", "tls-cert", "tls-key"} {
			if f, ok := args[name]; ok && mountFor(f) == nil {
				t.Errorf("--%s %s is on no volume", name, f)
			}
		}
	})

	t.Run("security", func(t *testing.T) {
		psc, sc := spec.SecurityContext, c.SecurityContext
		if psc == nil || sc == nil {
			t.Fatal("pod and container securityContext must be set")
		}
		if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
			t.Error("the pod must run as non-root uid 65532 (distroless nonroot)")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem is not true")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("the container is privileged")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Error("capabilities must drop ALL and add none")
		}
	})

	t.Run("resources", func(t *testing.T) {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
				t.Errorf("no %s request", r)
			}
		}
		// An OOM kill would cut the node off from the apiserver.
		if _, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
			t.Error("a memory limit is set")
		}
	})
}

// containerfile returns the Containerfile's instructions, comments dropped
// and continuation lines joined.
func containerfile(t *testing.T) (instructions []string, comments string) {
	t.Helper()
	var cur strings.Builder
	var com strings.Builder
	for _, l := range strings.Split(repoFile(t, "deploy/kubernetes/Containerfile"), "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "#") {
			com.WriteString(trimmed + "\n")
			continue
		}
		if trimmed == "" && cur.Len() == 0 {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		instructions = append(instructions, strings.Join(strings.Fields(cur.String()), " "))
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatal("Containerfile ends with a continuation line")
	}
	return instructions, com.String()
}

// TestContainerfile checks the image build: a static, stripped, trimmed
// build of ./agent/cmd/halo-agent on golang (the go.mod version), copied into
// distroless static nonroot, with /halo-agent as the entrypoint.
func TestContainerfile(t *testing.T) {
	ins, comments := containerfile(t)
	var froms, runs, copies []string
	var entrypoint, user string
	for _, in := range ins {
		kw, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(kw) {
		case "FROM":
			froms = append(froms, rest)
		case "RUN":
			runs = append(runs, rest)
		case "COPY":
			copies = append(copies, rest)
		case "ENTRYPOINT":
			entrypoint = rest
		case "USER":
			user = rest
		}
	}

	gomod := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(repoFile(t, "go.mod"))
	if gomod == nil {
		t.Fatal("no go directive in go.mod")
	}
	if len(froms) != 2 {
		t.Fatalf("FROM lines = %q, want a builder and the final image", froms)
	}
	builder := regexp.MustCompile(`^(?:docker\.io/)?(?:library/)?golang:(\d+\.\d+)\S* AS (\S+)$`).FindStringSubmatch(froms[0])
	if builder == nil {
		t.Fatalf("first FROM = %q, want golang:<version> AS <name>", froms[0])
	}
	if builder[1] != gomod[1] {
		t.Errorf("builder is Go %s, go.mod says %s", builder[1], gomod[1])
	}
	if froms[1] != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final FROM = %q, want gcr.io/distroless/static-debian12:nonroot", froms[1])
	}

	var out string
	for _, r := range runs {
		if !strings.Contains(r, "go build") {
			continue
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X github.com/halolb/halo/internal/version.Set=${VERSION}"`, "./agent/cmd/halo-agent"} {
			if !strings.Contains(r, want) {
				t.Errorf("go build lacks %s: %s", want, r)
			}
		}
		if m := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(r); m != nil {
			out = m[1]
		}
	}
	if out == "" {
		t.Fatal("no RUN ... go build -o <file>")
	}
	want := fmt.Sprintf("--from=%s %s /halo-agent", builder[2], out)
	if !slices.Contains(copies, want) {
		t.Errorf("COPY lines = %q, want COPY %s", copies, want)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || !slices.Equal(ep, []string{"/halo-agent"}) {
		t.Errorf("ENTRYPOINT %s, want [\"/halo-agent\"] (exec form)", entrypoint)
	}
	if user != "65532:65532" {
		t.Errorf("USER = %q, want 65532:65532 (the pod's runAsUser)", user)
	}
	if !strings.Contains(comments, "podman build -f deploy/kubernetes/Containerfile --build-arg VERSION=") {
		t.Error("the comments do not show the build command")
	}
}

// TestContainerfileBuildTarget: what the Containerfile builds is a main
// package.
func TestContainerfileBuildTarget(t *testing.T) {
	dir := repoPath(t, "agent/cmd/halo-agent")
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("%s has no Go files (%v)", dir, err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if regexp.MustCompile(`(?m)^package main$`).Match(b) {
			return
		}
	}
	t.Errorf("%s is not package main", dir)
}

// unitSection returns key → values of one section of a systemd unit.
func unitSection(text, section string) map[string][]string {
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		if l[0] == '[' {
			in = l == "["+section+"]"
			continue
		}
		if k, v, ok := strings.Cut(l, "="); in && ok {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestSystemdUnit checks halo-agent.service: the agent's flags only, the
// cache in its StateDirectory, restarts, capabilities, and at least the
// hardening of halo-server.service.
func TestSystemdUnit(t *testing.T) {
	unit := repoFile(t, "deploy/systemd/halo-agent.service")
	svc := unitSection(unit, "Service")
	one := func(key string) string {
		if len(svc[key]) != 1 {
			t.Errorf("[Service] has %d %s=, want 1", len(svc[key]), key)
			return ""
		}
		return svc[key][0]
	}

	// Every line that runs halo-agent or passes it arguments.
	var run []string
	for _, l := range strings.Split(unit, "\n") {
		if strings.Contains(l, "halo-agent ") || strings.Contains(l, "ExecStart=") ||
			strings.Contains(l, "HALO_AGENT_ARGS") || strings.HasPrefix(strings.TrimSpace(l), "# --") {
			run = append(run, l)
		}
	}
	checkFlags(t, "halo-agent.service", strings.Join(run, "\n"))
	checkFlags(t, "halo-agent.default", repoFile(t, "deploy/systemd/halo-agent.default"))

	exec := strings.Fields(one("ExecStart"))
	if len(exec) == 0 || exec[0] != "/usr/local/bin/halo-agent" {
		t.Fatalf("ExecStart = %q, want /usr/local/bin/halo-agent ...", exec)
	}
	// $VAR words expand at run time; check the literal arguments.
	var literal []string
	for _, a := range exec[1:] {
		if !strings.HasPrefix(a, "$") {
			literal = append(literal, a)
		}
	}
	args := parseArgs(t, literal)
	if state := "/var/lib/" + one("StateDirectory"); args["cache-dir"] != state {
		t.Errorf("--cache-dir = %q, want the StateDirectory %s", args["cache-dir"], state)
	}

	for key, want := range map[string]string{
		"Restart":               "always",
		"StateDirectory":        "halo-agent",
		"EnvironmentFile":       "-/etc/default/halo-agent",
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
	} {
		if got := one(key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	// IP_FREEBIND (a VIP not yet on the host) needs no capability.
	if strings.Contains(strings.Join(append(svc["AmbientCapabilities"], svc["CapabilityBoundingSet"]...), " "), "CAP_NET_ADMIN") {
		t.Error("CAP_NET_ADMIN is granted; freebind does not need it")
	}
	u := unitSection(unit, "Unit")
	if !slices.Contains(strings.Fields(strings.Join(u["After"], " ")), "network-online.target") {
		t.Error("not After=network-online.target")
	}

	// The agent is at least as hardened as halo-server.
	server := unitSection(repoFile(t, "deploy/systemd/halo-server.service"), "Service")
	for key, vals := range server {
		switch key {
		case "ExecStart", "EnvironmentFile", "Restart", "RestartSec", "TimeoutStopSec", "Type", "KillSignal",
			"StateDirectory", "StateDirectoryMode", "ConfigurationDirectory", "ConfigurationDirectoryMode",
			"CapabilityBoundingSet", "LimitNOFILE":
			continue
		}
		if !slices.Equal(svc[key], vals) {
			t.Errorf("halo-server.service has %s=%s, halo-agent.service %q", key, vals, svc[key])
		}
	}
}

// TestSystemdUnitVerify runs systemd's own verifier on both units, pointed at
// this test binary (the binaries are not installed here); it needs
// systemd-analyze.
func TestSystemdUnitVerify(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"halo-agent", "halo-server"} {
		unit := strings.ReplaceAll(repoFile(t, "deploy/systemd/"+name+".service"), "/usr/local/bin/"+name, exe)
		path := filepath.Join(t.TempDir(), name+".service")
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

// TestReadmeFlags: every flag the deploy README gives halo-agent exists.
func TestReadmeFlags(t *testing.T) {
	var keep []string
	cont := false
	for _, l := range strings.Split(repoFile(t, "deploy/README.md"), "\n") {
		// Commands that run halo-agent (and their continuation lines),
		// the flag table, and the --fallback-* flags the text names.
		if cont || strings.HasPrefix(strings.TrimSpace(l), "halo-agent ") || strings.HasPrefix(l, "| `--") {
			keep = append(keep, l)
		}
		cont = (cont || strings.HasPrefix(strings.TrimSpace(l), "halo-agent ")) && strings.HasSuffix(l, "\\")
		for _, m := range regexp.MustCompile("`--([a-z-]+)").FindAllStringSubmatch(l, -1) {
			if strings.Contains(l, "halo-agent") || strings.HasPrefix(m[1], "fallback-") || strings.HasPrefix(m[1], "tls-") {
				keep = append(keep, "`--"+m[1])
			}
		}
	}
	checkFlags(t, "deploy/README.md", strings.Join(keep, "\n"))
}

// fakeAgent serves /readyz with the given status on loopback and returns
// its address.
func fakeAgent(t *testing.T, status int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCheckScript runs check-halo-agent.sh against a fake agent: ready,
// not ready, not listening; once with curl, once with only bash and
// timeout on PATH (the /dev/tcp fallback). shellcheck lints it.
func TestCheckScript(t *testing.T) {
	bash := tool(t, "bash")
	script := repoPath(t, "deploy/keepalived/check-halo-agent.sh")
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	if fi, err := os.Stat(script); err != nil {
		t.Fatal(err)
	} else if fi.Mode()&0o111 == 0 {
		t.Error("check-halo-agent.sh is not executable")
	}
	t.Run("shellcheck", func(t *testing.T) {
		if out, err := exec.Command(tool(t, "shellcheck"), script).CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %v\n%s", err, out)
		}
	})

	ready, notReady, closed := fakeAgent(t, http.StatusOK), fakeAgent(t, http.StatusServiceUnavailable), closedAddr(t)
	// check runs the script with PATH path against the three agents.
	check := func(t *testing.T, path string) {
		for _, tc := range []struct {
			addr string
			ok   bool
		}{{ready, true}, {notReady, false}, {closed, false}} {
			cmd := exec.Command(bash, script, tc.addr)
			cmd.Env = []string{"PATH=" + path}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			switch {
			case err != nil && !errors.As(err, &ee):
				t.Fatal(err)
			case tc.ok && err != nil:
				t.Errorf("ready agent at %s: %v\n%s", tc.addr, err, out)
			case !tc.ok && err == nil:
				t.Errorf("agent at %s is not ready, the script says it is", tc.addr)
			}
		}
	}
	t.Run("curl", func(t *testing.T) {
		tool(t, "curl")
		check(t, os.Getenv("PATH"))
	})
	t.Run("no curl", func(t *testing.T) {
		// A PATH with bash and timeout only: the /dev/tcp fallback.
		dir := t.TempDir()
		for _, name := range []string{"bash", "timeout"} {
			if err := os.Symlink(tool(t, name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		check(t, dir)
	})
}

// TestKeepalivedConf checks the keepalived configuration: it runs the
// check script with the agent's admin address and tracks it, and
// keepalived -t accepts it (which needs keepalived, and root).
func TestKeepalivedConf(t *testing.T) {
	conf := repoFile(t, "deploy/keepalived/keepalived.conf")
	const installed = "/etc/keepalived/check-halo-agent.sh"
	m := regexp.MustCompile(`(?m)^\s*script "` + regexp.QuoteMeta(installed) + ` ([^"]+)"`).FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf(`keepalived.conf: no vrrp_script with script "%s <admin address>"`, installed)
	}
	admin := parseArgs(t, loadPod(t).Spec.Containers[0].Args)["admin-listen"]
	if admin == "" {
		admin = defaultAdminListen
	}
	if m[1] != admin {
		t.Errorf("the check script asks %s, the agent's admin listener is %s", m[1], admin)
	}
	for _, re := range []string{
		`(?m)^vrrp_script chk_halo_agent \{`, `(?ms)track_script \{\s*chk_halo_agent\s*\}`,
		`(?m)^\s*weight -\d+$`, `(?m)^\s*fall \d+$`, `(?m)^\s*rise \d+$`,
		`(?ms)virtual_ipaddress \{\s*10\.0\.0\.100/24\b`, `(?m)^\s*enable_script_security$`,
	} {
		if !regexp.MustCompile(re).MatchString(conf) {
			t.Errorf("keepalived.conf does not match %s", re)
		}
	}

	keepalived := tool(t, "keepalived")
	if os.Geteuid() != 0 {
		skipOrFail(t, "keepalived -t runs as root only")
	}
	// The script where keepalived can run it: a root-owned directory that
	// only root may write (enable_script_security checks every parent).
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "check-halo-agent.sh")
	if err := os.WriteFile(script, []byte(repoFile(t, "deploy/keepalived/check-halo-agent.sh")), 0o755); err != nil {
		t.Fatal(err)
	}
	conf = strings.ReplaceAll(conf, installed, script)
	// The VRRP interface must exist on this machine.
	if iface := vrrpInterface(); iface != "eth0" {
		conf = regexp.MustCompile(`\beth0\b`).ReplaceAllString(conf, iface)
	}
	path := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(keepalived, "-t", "-f", path)
	out, err := cmd.CombinedOutput()
	// keepalived 2.2.7 (Debian 12) ends a successful test of a config with
	// scripts by killing itself with SIGTERM (acassen/keepalived#2587,
	// fixed in 2.2.8); errors exit non-zero with a message.
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
		err = nil
	}
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("keepalived -t: %v\n%s", err, out)
	}
}

// vrrpInterface is eth0 if this machine has it, else its first up,
// non-loopback interface with multicast (else lo).
func vrrpInterface() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return "lo"
	}
	name := "lo"
	for _, i := range ifs {
		if i.Name == "eth0" {
			return "eth0"
		}
		if name == "lo" && i.Flags&net.FlagUp != 0 && i.Flags&net.FlagLoopback == 0 && i.Flags&net.FlagMulticast != 0 {
			name = i.Name
		}
	}
	return name
}
