package hub

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// auditPageSize is how many events the Audit page lists.
const auditPageSize = 100

// auditList is the Audit page's: its filters as sent, with what to fix,
// and the events.
type auditList struct {
	Account, Principal, Start, End string
	formErrors
	Events []eventRow
	Next   string
}

// auditPage lists the audit trail, newest first, filtered by account,
// principal and time (UTC, as a datetime-local input sends it).
func (h *Hub) auditPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	q := r.URL.Query()
	l := auditList{Account: strings.TrimSpace(q.Get("account")), Principal: strings.TrimSpace(q.Get("principal")), Start: q.Get("start"), End: q.Get("end")}
	req := &credbrokerv1.ListAuditEventsRequest{Principal: l.Principal, PageSize: auditPageSize, PageToken: q.Get("page")}
	if l.Account != "" {
		req.Account = "accounts/" + l.Account
	}
	var err error
	if req.StartTime, err = formTime("start_time", l.Start); err == nil {
		if req.EndTime, err = formTime("end_time", l.End); err == nil {
			l.Events, l.Next, err = h.events(gate.WithCall(r.Context(), c), req)
		}
	}
	code := http.StatusOK
	if err != nil {
		fe, ok := placeError(err, map[string]place{"start_time": {field: "start"}, "end_time": {field: "end"}})
		if !ok {
			return err
		}
		l.formErrors, code = fe.only("account", "principal", "start", "end"), httpCode(err)
	}
	if l.Next != "" {
		next := url.Values{"page": {l.Next}}
		for k, v := range map[string]string{"account": l.Account, "principal": l.Principal, "start": l.Start, "end": l.End} {
			if v != "" {
				next.Set(k, v)
			}
		}
		l.Next = "/audit?" + next.Encode()
	}
	h.render(w, code, "audit", signedInPage(s, "Audit", l))
	if err != nil {
		return rendered{err}
	}
	return nil
}

// formTime is a datetime-local input's value, taken as UTC, or nil if empty.
func formTime(field, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return timestamppb.New(t), nil
		}
	}
	return nil, invalidField(field, "Enter a time as YYYY-MM-DDTHH:MM (UTC).")
}
