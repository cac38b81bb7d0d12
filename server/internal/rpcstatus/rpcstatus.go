// Package rpcstatus builds the gRPC statuses that both the gate and the
// handlers answer with: status errors with details, a google.rpc.ErrorInfo
// in credbroker's domain whose reason is one of the API's ErrorReason
// values, and the canonical names of status codes that the audit trail and
// the metrics record.
package rpcstatus

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of credbroker's errors.
const ErrorDomain = "credbroker"

// ErrorInfo is the detail that gives an error its reason.
func ErrorInfo(reason credbrokerv1.ErrorReason, meta map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: meta}
}

// WithDetails is a status error with details.
func WithDetails(code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	if withD, err := st.WithDetails(details...); err == nil {
		st = withD
	}
	return st.Err()
}

// codeNames are the canonical names of status codes, as in google.rpc.Code.
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// CodeName is a code's canonical name, as google.rpc.Code spells it.
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return c.String()
}
