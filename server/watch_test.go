package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/servertest"
)

// describe renders an event as "rev: PUT cluster/prod, DELETE node/prod/w1".
func describe(ev *halov1.WatchEvent) string {
	var parts []string
	for _, c := range ev.GetChanges() {
		typ := strings.TrimPrefix(c.GetType().String(), "CHANGE_TYPE_")
		switch {
		case c.GetCluster() != nil:
			parts = append(parts, fmt.Sprintf("%s cluster/%s", typ, c.GetCluster().GetName()))
		case c.GetNode() != nil:
			parts = append(parts, fmt.Sprintf("%s node/%s/%s", typ, c.GetNode().GetCluster(), c.GetNode().GetName()))
		}
	}
	return strings.Join(parts, ", ")
}

// recv reads n events that carry changes (skipping progress reports).
func recv(t *testing.T, s grpc.ServerStreamingClient[halov1.WatchEvent], n int) []*halov1.WatchEvent {
	t.Helper()
	var out []*halov1.WatchEvent
	for len(out) < n {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		if len(ev.GetChanges()) > 0 {
			out = append(out, ev)
		}
	}
	return out
}

func TestWatchStreamsEveryChange(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)

	stream, err := tc.Watch(ctx, &halov1.WatchRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	// From "now": the first event has no changes and names the start.
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetChanges()) != 0 || first.GetRevision() == 0 {
		t.Fatalf("first event %v, want an empty one with the start revision", first)
	}

	seed(t, tc) // 1 cluster + 5 nodes
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "other"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "worker-2"}); err != nil {
		t.Fatal(err)
	}
	del, err := tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod", Force: true})
	if err != nil {
		t.Fatal(err)
	}

	evs := recv(t, stream, 8)
	want := []string{
		"PUT cluster/prod",
		"PUT node/prod/master-1", "PUT node/prod/master-2", "PUT node/prod/master-3",
		"PUT node/prod/worker-1", "PUT node/prod/worker-2",
		"DELETE node/prod/worker-2",
		// A forced delete is one write: one event with every change.
		"DELETE cluster/prod, DELETE node/prod/master-1, DELETE node/prod/master-2, DELETE node/prod/master-3, DELETE node/prod/worker-1",
	}
	prev := first.GetRevision()
	for i, ev := range evs {
		if got := describe(ev); got != want[i] {
			t.Errorf("event %d: %q, want %q", i, got, want[i])
		}
		if ev.GetRevision() <= prev {
			t.Errorf("event %d: revision %d not after %d", i, ev.GetRevision(), prev)
		}
		prev = ev.GetRevision()
	}
	if evs[7].GetRevision() != del.GetRevision() {
		t.Errorf("delete event at %d, the delete was at %d", evs[7].GetRevision(), del.GetRevision())
	}
	// A put carries the stored object; a delete carries it as it was.
	if n := evs[1].GetChanges()[0].GetNode(); n.GetIp() != "10.0.0.1" || n.GetRevision() != evs[1].GetRevision() {
		t.Errorf("put payload: %v", n)
	}
	if n := evs[6].GetChanges()[0].GetNode(); n.GetIp() != "10.0.1.2" {
		t.Errorf("delete payload: %v", n)
	}
}

func TestWatchAllClusters(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	stream, err := tc.Watch(ctx, &halov1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	evs := recv(t, stream, 2)
	if describe(evs[0]) != "PUT cluster/a" || describe(evs[1]) != "PUT cluster/b" {
		t.Fatalf("got %q, %q", describe(evs[0]), describe(evs[1]))
	}
}

// TestWatchResumes breaks a watch in the middle, writes more, and resumes
// from the last revision + 1: every change arrives exactly once.
func TestWatchResumes(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	put := func(i int) int64 {
		t.Helper()
		n, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("prod", fmt.Sprintf("w%02d", i), fmt.Sprintf("10.0.1.%d", i+1), 0, wk)})
		if err != nil {
			t.Fatal(err)
		}
		return n.GetRevision()
	}
	var revs []int64
	for i := range 10 {
		revs = append(revs, put(i))
	}

	// Watch from the 3rd write, read 4 events, and break the stream.
	wctx, cancel := context.WithCancel(ctx)
	stream, err := tc.Watch(wctx, &halov1.WatchRequest{Cluster: "prod", FromRevision: revs[2]})
	if err != nil {
		t.Fatal(err)
	}
	got := recv(t, stream, 4)
	cancel()
	last := got[len(got)-1].GetRevision()

	// More writes while nobody watches.
	for i := 10; i < 15; i++ {
		revs = append(revs, put(i))
	}

	stream, err = tc.Watch(ctx, &halov1.WatchRequest{Cluster: "prod", FromRevision: last + 1})
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, recv(t, stream, len(revs)-2-4)...)
	for i, ev := range got {
		want := fmt.Sprintf("PUT node/prod/w%02d", i+2)
		if describe(ev) != want || ev.GetRevision() != revs[i+2] {
			t.Errorf("event %d: %q at %d, want %q at %d", i, describe(ev), ev.GetRevision(), want, revs[i+2])
		}
	}
}

// TestWatchAfterCompaction asks for history etcd has compacted: the stream
// ends with OUT_OF_RANGE, says what to do, and names the compact revision.
func TestWatchAfterCompaction(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)
	list, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Etcd.Compact(ctx, list.GetRevision()); err != nil {
		t.Fatal(err)
	}
	stream, err := tc.Watch(ctx, &halov1.WatchRequest{Cluster: "prod", FromRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	st := wantCode(t, err, codes.OutOfRange)
	if !strings.Contains(st.Message(), "compacted") || !strings.Contains(st.Message(), "ListNodes") {
		t.Errorf("message %q", st.Message())
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info.GetReason() != "REVISION_COMPACTED" || info.GetMetadata()["compact_revision"] != fmt.Sprint(list.GetRevision()) {
		t.Errorf("details %v", info)
	}
	// The documented recovery: watch from the list's revision + 1.
	stream, err = tc.Watch(ctx, &halov1.WatchRequest{Cluster: "prod", FromRevision: list.GetRevision() + 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "worker-1"}); err != nil {
		t.Fatal(err)
	}
	if got := describe(recv(t, stream, 1)[0]); got != "DELETE node/prod/worker-1" {
		t.Errorf("after relist: %q", got)
	}
}

// TestShutdownEndsWatches: a graceful stop does not hang on open watches;
// they end with UNAVAILABLE and a message that says why.
func TestShutdownEndsWatches(t *testing.T) {
	srv := servertest.New(t)
	// A connection of our own: servertest closes its Conn first on Close.
	conn := dial(t, srv.Addr)
	tc := halov1.NewTopologyServiceClient(conn)
	stream, err := tc.Watch(ctxT(t), &halov1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the watch is established
		t.Fatal(err)
	}
	srv.Close()
	_, err = stream.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("watch ended with %v, want UNAVAILABLE saying the server shuts down", err)
	}
}
