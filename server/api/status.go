package api

import (
	"context"
	"errors"
	"log/slog"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/halolb/halo/server/endpoints"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

// errorDomain names halo in the ErrorInfo details it attaches.
const errorDomain = "halo.v1"

// toStatus turns an error of the store, the validators or the evaluator into
// a gRPC status error: the one place where codes are chosen. Errors the
// client cannot fix are logged here.
func toStatus(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // already a status (e.g. from a stream's Send)
	}
	var verr *topology.Error
	if errors.As(err, &verr) {
		br := &errdetails.BadRequest{}
		for _, v := range verr.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
		}
		return withDetails(status.New(codes.InvalidArgument, "invalid argument: "+verr.Error()), br)
	}
	var cerr *store.CompactedError
	if errors.As(err, &cerr) {
		st := status.New(codes.OutOfRange, cerr.Error()+"; list the current state (ListClusters/ListNodes) and watch again from its revision + 1")
		return withDetails(st, &errdetails.ErrorInfo{Reason: "REVISION_COMPACTED", Domain: errorDomain, Metadata: map[string]string{
			"requested_revision": strconv.FormatInt(cerr.Requested, 10),
			"compact_revision":   strconv.FormatInt(cerr.Compacted, 10),
		}})
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, store.ErrNotFound), errors.Is(err, endpoints.ErrNodeNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, store.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, store.ErrFailedPrecondition), errors.Is(err, endpoints.ErrNoControlPlane):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrUnavailable):
		code = codes.Unavailable
		log.Warn("request failed: etcd unavailable", "method", method, "error", err)
	default:
		log.Error("request failed", "method", method, "error", err)
	}
	return status.Error(code, err.Error())
}

// withDetails attaches details to st; should that fail, st goes without them.
func withDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	if d, err := st.WithDetails(details...); err == nil {
		return d.Err()
	}
	return st.Err()
}
