// Package cache keeps the agent's last ACKed xDS resources on disk, so a
// restarted agent serves its last configuration before any control-plane
// replica answers. The file is written atomically (temporary file, fsync,
// rename, fsync of the directory): a crash leaves the old file or the new
// one, never half of one.
//
// The file holds one Envoy DeltaDiscoveryResponse whose resources carry
// their own type URLs; it can be read with any protobuf tool.
package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/halolb/halo/agent/xdsclient"
)

// FileName is the cache file's name in the cache directory.
const FileName = "xds-resources.pb"

// maxSize bounds what Load reads: far above any real configuration.
const maxSize = 64 << 20

// Save writes rs to dir/FileName atomically, creating dir if needed.
func Save(dir string, rs []*xdsclient.Resource) error {
	msg := &discoveryv3.DeltaDiscoveryResponse{}
	for _, r := range rs {
		msg.Resources = append(msg.Resources, &discoveryv3.Resource{Name: r.Name, Version: r.Version, Resource: r.Body})
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return fmt.Errorf("cache: encode: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	tmp, err := os.CreateTemp(dir, FileName+".tmp*")
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("cache: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("cache: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, FileName)); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cache: sync directory: %w", err)
	}
	return nil
}

// Load reads the resources saved in dir. A missing file is no error: it
// returns no resources.
func Load(dir string) ([]*xdsclient.Resource, error) {
	path := filepath.Join(dir, FileName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if st.Size() > maxSize {
		return nil, fmt.Errorf("cache: %s is %d bytes, more than the %d a configuration can take", path, st.Size(), maxSize)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	msg := &discoveryv3.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(b, msg); err != nil {
		return nil, fmt.Errorf("cache: %s: %w", path, err)
	}
	var rs []*xdsclient.Resource
	for i, r := range msg.GetResources() {
		if r.GetResource() == nil || r.GetName() == "" {
			return nil, fmt.Errorf("cache: %s: resource %d has no name or body", path, i)
		}
		rs = append(rs, &xdsclient.Resource{TypeURL: r.GetResource().GetTypeUrl(), Name: r.GetName(), Version: r.GetVersion(), Body: r.GetResource()})
	}
	return rs, nil
}
