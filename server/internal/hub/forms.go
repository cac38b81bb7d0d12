package hub

import (
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
)

// formErrors are what to fix in a form as sent: by field name, and about
// the form as a whole.
type formErrors struct {
	Fields map[string]string
	Error  string
}

// message is everything fe says, on one line.
func (fe formErrors) message() string {
	var all []string
	if fe.Error != "" {
		all = append(all, fe.Error)
	}
	for _, m := range fe.Fields {
		all = append(all, m)
	}
	return strings.Join(all, " ")
}

// only is fe with the errors of fields the form does not have (it cannot
// show them next to one) moved over the whole form.
func (fe formErrors) only(names ...string) formErrors {
	for name, msg := range fe.Fields {
		if !slices.Contains(names, name) {
			fe.Error = strings.TrimSpace(fe.Error + " " + name + ": " + msg)
			delete(fe.Fields, name)
		}
	}
	return fe
}

// place is where a form shows an error: next to field (the request's
// field of the same name when empty), led by say.
type place struct{ field, say string }

// placeError puts err, as the API answered it, on a form: next to the
// field it is about or over the whole form. An error is about the field
// of a google.rpc.BadRequest it carries (the last part of the request
// field's name, or as fields says), or the field fields gives for its
// ErrorInfo reason or its code's name ("AlreadyExists"). ok is false for
// an error no form can help with (the broker failed, the storage is out
// of reach, a rate limit, a refusal): the error page says those.
func placeError(err error, fields map[string]place) (fe formErrors, ok bool) {
	st := status.Convert(err)
	switch st.Code() {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists, codes.NotFound, codes.OutOfRange:
	case codes.Unavailable:
		if reasonOf(st) != credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE.String() {
			return fe, false
		}
	default:
		return fe, false
	}
	msg, at := st.Message(), place{}
	for _, d := range st.Details() {
		if br, isBR := d.(*errdetails.BadRequest); isBR && len(br.GetFieldViolations()) > 0 {
			v := br.GetFieldViolations()[0]
			name := v.GetField()
			name = name[strings.LastIndex(name, ".")+1:]
			at, msg = place{field: name}, v.GetDescription()
			if p, mapped := fields[name]; mapped {
				at = p
			}
		}
	}
	if at.field == "" {
		if p, mapped := fields[reasonOf(st)]; mapped && reasonOf(st) != "" {
			at = p
		} else if p, mapped := fields[st.Code().String()]; mapped {
			at = p
		}
	}
	if info := infoOf(st); info.GetReason() == credbrokerv1.ErrorReason_CREDENTIALS_REJECTED.String() {
		// What the provider said, not the API's advice to callers.
		msg = "the provider answered HTTP 400/401"
		if code := info.GetMetadata()["provider_error"]; code != "" {
			msg = "the provider said: " + strings.TrimSuffix(code+": "+info.GetMetadata()["provider_error_description"], ": ")
		}
	}
	if at.say != "" {
		msg = at.say + " (" + msg + ")"
	}
	if at.field == "" {
		if st.Code() == codes.NotFound {
			return fe, false // of the page's own resource
		}
		return formErrors{Error: msg}, true
	}
	return formErrors{Fields: map[string]string{at.field: msg}}, true
}

// reasonOf is the ErrorInfo reason of st, or "".
func reasonOf(st *status.Status) string { return infoOf(st).GetReason() }

// infoOf is the ErrorInfo of st, or nil.
func infoOf(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// invalidField is a form field's error as the API would answer it.
func invalidField(field, problem string) error { return grpcerr.InvalidArgument(field, problem) }

// rendered is an error whose page the handler rendered itself: the gate
// records it, and nothing more is shown.
type rendered struct{ error }
