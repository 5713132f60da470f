package cache_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halolb/halo/agent/cache"
	"github.com/halolb/halo/agent/xdsclient"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	if rs, err := cache.Load(dir); err != nil || rs != nil {
		t.Fatalf("empty dir: %v %v", rs, err)
	}
	body, _ := anypb.New(wrapperspb.String("x"))
	body.TypeUrl = resource.ClusterType
	in := []*xdsclient.Resource{{TypeURL: resource.ClusterType, Name: "c", Version: "v1", Body: body}}
	if err := cache.Save(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := cache.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Name != "c" || out[0].Version != "v1" || out[0].TypeURL != resource.ClusterType || !proto.Equal(out[0].Body, body) {
		t.Fatalf("got %+v", out)
	}
	// Saving again replaces the file and leaves no temporary behind.
	if err := cache.Save(dir, nil); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != cache.FileName {
		t.Errorf("directory holds %v", ents)
	}
	if out, _ := cache.Load(dir); len(out) != 0 {
		t.Errorf("after saving nothing: %v", out)
	}
}

func TestLoadRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, cache.FileName), []byte{0xff, 0xff, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Load(dir); err == nil {
		t.Error("garbage loaded without error")
	}
}
