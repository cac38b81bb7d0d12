// Package grpcerr lets the broker's errors describe themselves to gRPC
// callers: a domain error made here (or with a GRPCStatus method built
// with Status) carries its code, its message and its google.rpc.ErrorInfo
// reason, so the API's error mapper handles only what is left: context
// errors, and anything unexpected, which becomes a logged, generic
// INTERNAL.
package grpcerr

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Domain is the google.rpc.ErrorInfo domain of the broker's errors.
const Domain = "credbroker"

// Error is an error with its gRPC code and, if set, its ErrorInfo reason.
// Compare with errors.Is: each is a sentinel.
type Error struct {
	code   codes.Code
	reason credbrokerv1.ErrorReason
	msg    string
}

// New is an error that callers get with code and msg.
func New(code codes.Code, msg string) *Error { return &Error{code: code, msg: msg} }

// WithReason is an error that callers get with code, msg and an ErrorInfo
// naming reason.
func WithReason(code codes.Code, reason credbrokerv1.ErrorReason, msg string) *Error {
	return &Error{code: code, reason: reason, msg: msg}
}

func (e *Error) Error() string { return e.msg }

// GRPCStatus is the status callers get.
func (e *Error) GRPCStatus() *status.Status {
	if e.reason == credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		return status.New(e.code, e.msg)
	}
	return Status(e.code, e.msg, Info(e.reason, nil))
}

// Status is a status with details.
func Status(code codes.Code, msg string, details ...protoadapt.MessageV1) *status.Status {
	st := status.New(code, msg)
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st
}

// Info is the ErrorInfo of a reason, in the broker's domain.
func Info(reason credbrokerv1.ErrorReason, meta map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason.String(), Domain: Domain, Metadata: meta}
}

// Retry tells callers how long to wait before they retry.
func Retry(after time.Duration) *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(after)}
}

// InvalidArgument names the offending field in the message and in a
// google.rpc.BadRequest detail.
func InvalidArgument(field, problem string) error {
	return Status(codes.InvalidArgument, field+": "+problem,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: problem}}}).Err()
}

// FieldError is an INVALID_ARGUMENT that names the field to fix.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Problem }

// GRPCStatus is INVALID_ARGUMENT with a google.rpc.BadRequest naming the field.
func (e *FieldError) GRPCStatus() *status.Status {
	st, _ := status.FromError(InvalidArgument(e.Field, e.Problem))
	return st
}
