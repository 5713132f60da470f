package auth

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/halolb/halo/internal/identity"
)

// Role is what a user identity may do.
type Role int

// The roles, weakest first.
const (
	NoRole Role = iota
	// ReadOnly may call Get, List, Watch, Resolve and Status RPCs.
	ReadOnly
	// Admin may also Put and Delete (clusters, nodes, draining).
	Admin
)

func (r Role) String() string {
	switch r {
	case ReadOnly:
		return "read-only"
	case Admin:
		return "admin"
	}
	return "none"
}

// policyFile is the policy file's format:
//
//	# halo-server roles for user identities (spiffe://<trust-domain>/user/<name>)
//	admin: [alice, ci-deploy]
//	read-only: [grafana, bob]
//
// A user named nowhere has no role; "*" names every user.
type policyFile struct {
	Admin    []string `json:"admin"`
	ReadOnly []string `json:"read-only"`
}

// Policy maps user names to roles.
type Policy struct {
	roles map[string]Role
}

// ParsePolicy reads a policy. Unknown keys, names that are not valid user
// names, and a user given two roles are errors.
func ParsePolicy(b []byte) (*Policy, error) {
	var f policyFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("policy: %w (want keys admin and read-only, each a list of user names)", err)
	}
	p := &Policy{roles: map[string]Role{}}
	for _, set := range []struct {
		role  Role
		names []string
	}{{Admin, f.Admin}, {ReadOnly, f.ReadOnly}} {
		for _, n := range set.names {
			if n != "*" {
				if err := identity.UserID("x", n).Validate(); err != nil {
					return nil, fmt.Errorf("policy: %s: %q is not a user name: %w", set.role, n, err)
				}
			}
			if r, dup := p.roles[n]; dup {
				return nil, fmt.Errorf("policy: user %q is both %s and %s", n, r, set.role)
			}
			p.roles[n] = set.role
		}
	}
	return p, nil
}

// RoleOf is the user's role: its own, else that of "*".
func (p *Policy) RoleOf(user string) Role {
	if p == nil {
		return NoRole
	}
	if r, ok := p.roles[user]; ok {
		return r
	}
	return p.roles["*"]
}

// Users lists the users by role, for logs.
func (p *Policy) Users(r Role) []string {
	var out []string
	for n, x := range p.roles {
		if x == r {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// PolicyFile is a policy read from a file and read again when the file
// changes (looked at most once a second, when a call needs it). A change
// that does not parse keeps the previous policy and is logged.
type PolicyFile struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	checked time.Time
	mtime   time.Time
	size    int64
	policy  *Policy
}

// LoadPolicyFile reads the policy at path.
func LoadPolicyFile(path string, log *slog.Logger) (*PolicyFile, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &PolicyFile{path: path, log: log}
	if err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *PolicyFile) load() error {
	fi, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.mu.Lock()
	f.policy, f.mtime, f.size, f.checked = p, fi.ModTime(), fi.Size(), time.Now()
	f.mu.Unlock()
	return nil
}

// Policy is the current policy.
func (f *PolicyFile) Policy() *Policy {
	f.mu.Lock()
	stale := time.Since(f.checked) >= time.Second
	if stale {
		f.checked = time.Now()
	}
	changed := false
	if stale {
		fi, err := os.Stat(f.path)
		changed = err != nil || !fi.ModTime().Equal(f.mtime) || fi.Size() != f.size
	}
	f.mu.Unlock()
	if changed {
		if err := f.load(); err != nil {
			f.log.Warn("policy file not reloaded; the previous policy stays in force", "error", err)
		} else {
			p := f.current()
			f.log.Info("policy reloaded", "file", f.path, "admin", p.Users(Admin), "read_only", p.Users(ReadOnly))
		}
	}
	return f.current()
}

func (f *PolicyFile) current() *Policy {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.policy
}
