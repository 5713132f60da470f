// Package certs is `halo-server certs`: it makes the certificates of halo's
// production mode (mutual TLS) — a small CA, and certificates for
// halo-server replicas, users and nodes that name their holder with a
// SPIFFE-style URI SAN (package identity) — so that operators need no other
// tool.
package certs

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/pki"
)

// DefaultTrustDomain is the trust domain of identities unless
// --trust-domain says otherwise.
const DefaultTrustDomain = identity.DefaultTrustDomain

// DefaultCAName is the CA certificate's common name unless --name says
// otherwise.
const DefaultCAName = "halo CA"

// DefaultCAValidity is how long a new CA is valid unless --validity says
// otherwise: 10 years.
const DefaultCAValidity = 87600 * time.Hour

// DefaultValidity is how long a replica, user or node certificate is valid
// unless --validity says otherwise: 1 year.
const DefaultValidity = 8760 * time.Hour

// The CA's files in --dir.
const (
	caCertName = "ca.crt"
	caKeyName  = "ca.key"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command could not do its work
	exitUsage   = 2 // a bad flag or argument
)

const usage = `halo-server certs: make the certificates of halo's production mode (mutual TLS).

A small certificate authority (CA) signs one certificate per halo-server replica,
per user (a person or a script calling the admin API) and per node (its halo
agent). Each certificate names its holder with one SPIFFE-style URI SAN:

  spiffe://<trust-domain>/replica/<name>                  a halo-server replica
  spiffe://<trust-domain>/user/<name>                     a person or a script
  spiffe://<trust-domain>/cluster/<cluster>/node/<node>   the halo agent of a node

The trust domain is halo.local unless --trust-domain says otherwise. Names (trust
domain, replica, user, cluster, node) are lower-case DNS-style: a-z, 0-9, '.', '-'
and '_', beginning and ending with a letter or a digit. Bad input writes nothing.

Keys are ECDSA P-256, files are PEM, key files have mode 0600. An existing file is
never overwritten without --force; with it, each file is replaced whole (by a
rename), so a server reloading it reads either the old or the new one.

Usage:
  halo-server certs ca     --dir DIR [--name "halo CA"] [--validity 87600h] [--force]
  halo-server certs server --dir DIR --name REPLICA [--trust-domain TD] [--dns NAMES] [--ip IPS] [--validity 8760h] [--force]
  halo-server certs user   --dir DIR --name NAME [--trust-domain TD] [--validity 8760h] [--force]
  halo-server certs node   --dir DIR --cluster CLUSTER --node NODE [--trust-domain TD] [--validity 8760h] [--force]

Subcommands:
  ca      a new CA: DIR/ca.crt and DIR/ca.key (DIR is created if missing).
  server  a replica's certificate, DIR/server-<name>.crt and .key, for serving and
          for calling the other replicas (server and client usage). Its DNS and IP
          SANs are --dns and --ip; when neither is given, localhost, 127.0.0.1 and ::1.
  user    a user's client certificate, DIR/user-<name>.crt and .key.
  node    a node's client certificate, DIR/node-<cluster>-<node>.crt and .key.

server, user and node sign with DIR/ca.crt and DIR/ca.key. Each file written is
printed on a line of its own. Run "halo-server certs <subcommand> -h" for its
flags.

Example:
  halo-server certs ca     --dir ./pki
  halo-server certs server --dir ./pki --name r1 --dns halo.example.com --ip 10.0.0.5
  halo-server certs user   --dir ./pki --name alice
  halo-server certs node   --dir ./pki --cluster prod --node worker-1

Exit status: 0 on success, 1 when the work failed (no CA, a file exists, I/O),
2 on a bad subcommand, flag or argument.
`

// subcommand is one of ca, server, user and node.
type subcommand struct {
	name string
	// help is printed above the flags by -h.
	help string
	// define defines the subcommand's flags on fs and returns what runs
	// once they are parsed.
	define func(fs *flag.FlagSet) func(stdout, stderr io.Writer) error
}

// subcommands are the subcommands, by name.
var subcommands = map[string]subcommand{
	"ca":     {"ca", caHelp, defineCA},
	"server": {"server", serverHelp, defineServer},
	"user":   {"user", userHelp, defineUser},
	"node":   {"node", nodeHelp, defineNode},
}

// Main runs `halo-server certs` with args (those after "certs"), and
// returns the exit code: 0 on success, 1 when the work failed, 2 on a usage
// error.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case "help":
		if len(args) == 1 {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		return Main([]string{args[1], "-h"}, stdout, stderr)
	}
	sc, ok := subcommands[args[0]]
	if !ok {
		what := fmt.Sprintf("unknown subcommand %q", args[0])
		if strings.HasPrefix(args[0], "-") {
			what = fmt.Sprintf("%s comes before a subcommand", args[0])
		}
		fmt.Fprintf(stderr, "halo-server certs: %s; want ca, server, user or node (see halo-server certs -h)\n", what)
		return exitUsage
	}
	return sc.run(args[1:], stdout, stderr)
}

// usageError is a bad flag or argument.
type usageError struct{ error }

// usagef returns a usageError.
func usagef(format string, a ...any) error {
	return usageError{fmt.Errorf(format, a...)}
}

// run parses args and runs the subcommand.
func (sc subcommand) run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("halo-server certs "+sc.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, help on stdout
	fs.Usage = func() {}
	do := sc.define(fs)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		sc.printHelp(fs, stdout)
		return exitOK
	case err != nil:
		err = usageError{err}
	case fs.NArg() > 0:
		err = usagef("unexpected arguments %q", fs.Args())
	default:
		err = do(stdout, stderr)
	}
	return sc.report(err, stderr)
}

// printHelp writes the subcommand's help and flags to w.
func (sc subcommand) printHelp(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, sc.help)
	fmt.Fprintln(w, "\nFlags (each may be written -flag or --flag):")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// report writes err, if any, to stderr and returns the exit code.
func (sc subcommand) report(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	if errors.As(err, new(usageError)) {
		fmt.Fprintf(stderr, "halo-server certs %s: %v (see halo-server certs %s -h)\n", sc.name, err, sc.name)
		return exitUsage
	}
	fmt.Fprintf(stderr, "halo-server certs %s: %v\n", sc.name, err)
	return exitFailure
}

// required returns a usage error naming the flags, given as name and value
// pairs, whose values are empty.
func required(flagsAndValues ...string) error {
	var missing []string
	for i := 0; i+1 < len(flagsAndValues); i += 2 {
		if flagsAndValues[i+1] == "" {
			missing = append(missing, "--"+flagsAndValues[i])
		}
	}
	if len(missing) > 0 {
		return usagef("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// checkValidity refuses a validity that is not positive.
func checkValidity(d time.Duration) error {
	if d <= 0 {
		return usagef("--validity %v: must be positive", d)
	}
	return nil
}

const caHelp = `Usage: halo-server certs ca --dir DIR [--name "halo CA"] [--validity 87600h] [--force]

Makes a new CA: writes its certificate to DIR/ca.crt (mode 0644) and its private
key to DIR/ca.key (mode 0600), creating DIR (mode 0700) if missing. Keep ca.key
secret; give ca.crt to everything that verifies halo certificates.

With --force an existing CA is replaced: certificates the old one signed will no
longer verify against the new ca.crt.
`

// caOptions are the flags of ca.
type caOptions struct {
	dir, name string
	validity  time.Duration
	force     bool
}

// defineCA defines the flags of ca.
func defineCA(fs *flag.FlagSet) func(stdout, stderr io.Writer) error {
	o := &caOptions{}
	fs.StringVar(&o.dir, "dir", "", "`directory` to write ca.crt and ca.key in (required)")
	fs.StringVar(&o.name, "name", DefaultCAName, "the CA certificate's common `name`")
	fs.DurationVar(&o.validity, "validity", DefaultCAValidity, "how long the CA is valid; 87600h is 10 years")
	fs.BoolVar(&o.force, "force", false, "replace an existing ca.crt and ca.key")
	return o.run
}

// run makes and writes the CA.
func (o *caOptions) run(stdout, _ io.Writer) error {
	if err := required("dir", o.dir, "name", o.name); err != nil {
		return err
	}
	if err := checkValidity(o.validity); err != nil {
		return err
	}
	files := []file{{path: filepath.Join(o.dir, caCertName), perm: 0o644}, {path: filepath.Join(o.dir, caKeyName), perm: 0o600}}
	if !o.force {
		if err := refuseExisting(files); err != nil {
			return err
		}
	}
	ca, err := pki.NewCA(o.name, o.validity)
	if err != nil {
		return fmt.Errorf("make the CA: %w", err)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return fmt.Errorf("make the CA: %w", err)
	}
	files[0].data, files[1].data = ca.CertPEM, keyPEM
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return fmt.Errorf("create --dir: %w", err)
	}
	return writeFiles(files, o.force, stdout)
}

// leafOptions are the flags server, user and node share.
type leafOptions struct {
	dir, trustDomain string
	validity         time.Duration
	force            bool
}

// define defines the shared flags on fs.
func (o *leafOptions) define(fs *flag.FlagSet, kind string) {
	fs.StringVar(&o.dir, "dir", "", "`directory` holding ca.crt and ca.key, where the "+kind+"'s files are written (required)")
	fs.StringVar(&o.trustDomain, "trust-domain", DefaultTrustDomain, "trust `domain` of the identity (the host of its spiffe:// URI)")
	fs.DurationVar(&o.validity, "validity", DefaultValidity, "how long the certificate is valid, cut to the CA's own validity; 8760h is 1 year")
	fs.BoolVar(&o.force, "force", false, "replace the "+kind+"'s existing .crt and .key")
}

// leaf is one certificate to issue.
type leaf struct {
	id identity.ID
	// nameFlag is the flag that set id.Name, for errors.
	nameFlag string
	// base is the files' name without .crt or .key.
	base       string
	commonName string
	dnsNames   []string
	ips        []net.IP
	// server asks for server and client usage; otherwise client only.
	server bool
}

const serverHelp = `Usage: halo-server certs server --dir DIR --name REPLICA [--trust-domain TD] [--dns NAMES] [--ip IPS] [--validity 8760h] [--force]

Writes a halo-server replica's certificate and key, signed by DIR/ca.crt and
DIR/ca.key, to DIR/server-<name>.crt and DIR/server-<name>.key (mode 0600). Its
URI SAN is spiffe://<trust-domain>/replica/<name>; it is valid for serving (server
auth) and for calling the other replicas (client auth). Its DNS and IP SANs are
--dns and --ip; when neither is given, DNS localhost and IPs 127.0.0.1 and ::1.
`

// defineServer defines the flags of server.
func defineServer(fs *flag.FlagSet) func(stdout, stderr io.Writer) error {
	var (
		o    leafOptions
		name string
		dns  dnsList
		ips  ipList
	)
	o.define(fs, "replica")
	fs.StringVar(&name, "name", "", "the replica's `name` (as in halo-server --replica-name; required)")
	fs.Var(&dns, "dns", "comma-separated DNS `names` clients reach the replica by (may be repeated; default localhost when --ip is not given either)")
	fs.Var(&ips, "ip", "comma-separated IP `addresses` clients reach the replica at (may be repeated; default 127.0.0.1,::1 when --dns is not given either)")
	return func(stdout, stderr io.Writer) error {
		if err := required("dir", o.dir, "name", name); err != nil {
			return err
		}
		l := leaf{id: identity.ReplicaID(o.trustDomain, name), nameFlag: "name", base: "server-" + name,
			commonName: name, dnsNames: dns, ips: ips, server: true}
		if len(dns) == 0 && len(ips) == 0 {
			l.dnsNames, l.ips = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		return o.issue(l, stdout, stderr)
	}
}

const userHelp = `Usage: halo-server certs user --dir DIR --name NAME [--trust-domain TD] [--validity 8760h] [--force]

Writes a user's client certificate and key, signed by DIR/ca.crt and DIR/ca.key,
to DIR/user-<name>.crt and DIR/user-<name>.key (mode 0600). Its URI SAN is
spiffe://<trust-domain>/user/<name>; it is valid for client auth only.
`

// defineUser defines the flags of user.
func defineUser(fs *flag.FlagSet) func(stdout, stderr io.Writer) error {
	var (
		o    leafOptions
		name string
	)
	o.define(fs, "user")
	fs.StringVar(&name, "name", "", "the user's `name` (required)")
	return func(stdout, stderr io.Writer) error {
		if err := required("dir", o.dir, "name", name); err != nil {
			return err
		}
		return o.issue(leaf{id: identity.UserID(o.trustDomain, name), nameFlag: "name", base: "user-" + name, commonName: name}, stdout, stderr)
	}
}

const nodeHelp = `Usage: halo-server certs node --dir DIR --cluster CLUSTER --node NODE [--trust-domain TD] [--validity 8760h] [--force]

Writes the client certificate and key of a node's halo agent, signed by
DIR/ca.crt and DIR/ca.key, to DIR/node-<cluster>-<node>.crt and .key (mode 0600).
Its URI SAN is spiffe://<trust-domain>/cluster/<cluster>/node/<node> and its
common name <cluster>/<node>; it is valid for client auth only.
`

// defineNode defines the flags of node.
func defineNode(fs *flag.FlagSet) func(stdout, stderr io.Writer) error {
	var (
		o             leafOptions
		cluster, node string
	)
	o.define(fs, "node")
	fs.StringVar(&cluster, "cluster", "", "the `name` of the node's cluster in halo (required)")
	fs.StringVar(&node, "node", "", "the node's `name` (its Kubernetes node name; required)")
	return func(stdout, stderr io.Writer) error {
		if err := required("dir", o.dir, "cluster", cluster, "node", node); err != nil {
			return err
		}
		return o.issue(leaf{id: identity.NodeID(o.trustDomain, cluster, node), nameFlag: "node",
			base: "node-" + cluster + "-" + node, commonName: cluster + "/" + node}, stdout, stderr)
	}
}

// issue checks l, issues it with the CA in o.dir and writes its files.
func (o *leafOptions) issue(l leaf, stdout, stderr io.Writer) error {
	if err := checkValidity(o.validity); err != nil {
		return err
	}
	if err := checkIdentity(l.id, l.nameFlag); err != nil {
		return err
	}
	files := []file{{path: filepath.Join(o.dir, l.base+".crt"), perm: 0o644}, {path: filepath.Join(o.dir, l.base+".key"), perm: 0o600}}
	if !o.force {
		if err := refuseExisting(files); err != nil {
			return err
		}
	}
	ca, err := loadCA(o.dir)
	if err != nil {
		return err
	}
	notAfter := time.Now().Add(o.validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
		fmt.Fprintf(stderr, "halo-server certs: warning: %s is valid only until the CA expires, %s\n", files[0].path, notAfter.UTC().Format(time.RFC3339))
	}
	iss, err := ca.Issue(pki.Request{CommonName: l.commonName, DNSNames: l.dnsNames, IPs: l.ips, URIs: []*url.URL{l.id.URL()},
		Server: l.server, Client: true, NotAfter: notAfter})
	if err != nil {
		return fmt.Errorf("issue %s: %w", l.id, err)
	}
	files[0].data, files[1].data = iss.CertPEM, iss.KeyPEM
	return writeFiles(files, o.force, stdout)
}

// checkIdentity validates id, naming the flag of its first bad part:
// --trust-domain, then --cluster (nodes), then nameFlag.
func checkIdentity(id identity.ID, nameFlag string) error {
	probe := id
	probe.Name = "x"
	if id.Kind == identity.Node {
		probe.Cluster = "x"
	}
	if err := probe.Validate(); err != nil {
		return usagef("--trust-domain: %w", err)
	}
	probe.Cluster = id.Cluster
	if err := probe.Validate(); err != nil {
		return usagef("--cluster: %w", err)
	}
	if err := id.Validate(); err != nil {
		return usagef("--%s: %w", nameFlag, err)
	}
	return nil
}

// loadCA loads the CA in dir, and refuses one that is not valid now.
func loadCA(dir string) (*pki.CA, error) {
	certFile, keyFile := filepath.Join(dir, caCertName), filepath.Join(dir, caKeyName)
	ca, err := pki.LoadCA(certFile, keyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CA in %s (make one with: halo-server certs ca --dir %s): %w", dir, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load the CA: %w", err)
	}
	now := time.Now()
	if now.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("the CA in %s expired at %s", certFile, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(ca.Cert.NotBefore) {
		return nil, fmt.Errorf("the CA in %s is not valid before %s", certFile, ca.Cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return ca, nil
}

// dnsName is a DNS name a certificate may carry: labels of letters, digits
// and hyphens, the first may be a wildcard.
var dnsName = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// dnsList is the value of --dns: comma-separated DNS names, checked.
type dnsList []string

// String returns the names, comma-separated.
func (l *dnsList) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated names of s.
func (l *dnsList) Set(s string) error {
	for n := range strings.SplitSeq(s, ",") {
		if len(n) > 253 || !dnsName.MatchString(n) {
			return fmt.Errorf("%q is not a DNS name", n)
		}
		*l = append(*l, n)
	}
	return nil
}

// ipList is the value of --ip: comma-separated IP addresses, checked.
type ipList []net.IP

// String returns the addresses, comma-separated.
func (l *ipList) String() string {
	s := make([]string, len(*l))
	for i, ip := range *l {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

// Set adds the comma-separated addresses of s.
func (l *ipList) Set(s string) error {
	for a := range strings.SplitSeq(s, ",") {
		ip := net.ParseIP(a)
		if ip == nil {
			return fmt.Errorf("%q is not an IP address", a)
		}
		*l = append(*l, ip)
	}
	return nil
}

// file is a file to write.
type file struct {
	path string
	data []byte
	perm os.FileMode
}

// refuseExisting returns an error naming those of files that exist.
func refuseExisting(files []file) error {
	var existing []string
	for _, f := range files {
		_, err := os.Lstat(f.path)
		switch {
		case err == nil:
			existing = append(existing, f.path)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("look for %s: %w", f.path, err)
		}
	}
	switch len(existing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%s already exists; --force replaces it", existing[0])
	}
	return fmt.Errorf("%s already exist; --force replaces them", strings.Join(existing, " and "))
}

// writeFiles writes files and prints their paths on stdout. Each is written
// to a temporary file in its directory first, and all are moved into place
// only once all are written, so that no file is ever half-written. Without
// force an existing file is an error (also one that appeared since
// refuseExisting) and the files already placed are removed again; with force
// existing files are replaced.
func writeFiles(files []file, force bool, stdout io.Writer) error {
	var temps []string
	defer func() {
		for _, t := range temps {
			os.Remove(t) // gone after a rename; just a second name after a link
		}
	}()
	for _, f := range files {
		t, err := writeTemp(f)
		if err != nil {
			return err
		}
		temps = append(temps, t)
	}
	for i, f := range files {
		if err := place(temps[i], f.path, force); err != nil {
			if !force {
				for _, placed := range files[:i] {
					os.Remove(placed.path)
				}
			}
			return err
		}
	}
	for _, f := range files {
		fmt.Fprintln(stdout, "wrote", f.path)
	}
	return nil
}

// writeTemp writes f's data, with f's mode, to a new temporary file next to
// f.path, and returns its path.
func writeTemp(f file) (string, error) {
	t, err := os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", f.path, err)
	}
	_, err = t.Write(f.data)
	if err == nil {
		err = t.Chmod(f.perm)
	}
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(t.Name())
		return "", fmt.Errorf("write %s: %w", f.path, err)
	}
	return t.Name(), nil
}

// place gives the temporary file temp its final name path: a rename with
// force, else a hard link, which fails if path exists.
func place(temp, path string, force bool) error {
	if force {
		if err := os.Rename(temp, path); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
		return nil
	}
	err := os.Link(temp, path)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; --force replaces it: %w", path, err)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
