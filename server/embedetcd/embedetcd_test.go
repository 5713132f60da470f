package embedetcd_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/halolb/halo/server/embedetcd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, dir string) *embedetcd.Etcd {
	t.Helper()
	e, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: dir, UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func client(t *testing.T, e *embedetcd.Etcd) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRestartKeepsData starts etcd, writes, stops it, starts it again on the
// same directory and reads the value back.
func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	c := client(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	e.Close()

	if _, err := os.Stat(filepath.Join(dir, "etcd", "member")); err != nil {
		t.Fatalf("no member dir: %v", err)
	}
	e = start(t, dir)
	defer e.Close()
	c = client(t, e)
	defer c.Close()
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v", resp.Kvs)
	}
}

func TestStartNeedsDir(t *testing.T) {
	if _, err := embedetcd.Start(context.Background(), embedetcd.Config{}); err == nil {
		t.Fatal("Start without Dir succeeded")
	}
}
