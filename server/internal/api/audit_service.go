package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/store"
)

type auditService struct {
	credbrokerv1.UnimplementedAuditServiceServer
	audit *audit.Log
	errs  errorMapper
}

func (s *auditService) ListAuditEvents(ctx context.Context, req *credbrokerv1.ListAuditEventsRequest) (*credbrokerv1.ListAuditEventsResponse, error) {
	q := audit.Query{Principal: req.GetPrincipal()}
	var err error
	if q.Limit, err = pageSize(req.GetPageSize(), 100); err != nil {
		return nil, err
	}
	if a := req.GetAccount(); a != "" {
		if _, err := parseName("account", a); err != nil {
			return nil, err
		}
		q.Resource = a
	}
	if q.Start, err = optionalTime("start_time", req.GetStartTime()); err != nil {
		return nil, err
	}
	if q.End, err = optionalTime("end_time", req.GetEndTime()); err != nil {
		return nil, err
	}
	if !q.Start.IsZero() && !q.End.IsZero() && q.End.Before(q.Start) {
		return nil, invalidArgument("end_time", "must not be before start_time")
	}
	if tok := req.GetPageToken(); tok != "" {
		if q.Before, err = parseAuditPageToken(tok); err != nil {
			return nil, err
		}
	}
	events, next, err := s.audit.List(q)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	resp := &credbrokerv1.ListAuditEventsResponse{Events: make([]*credbrokerv1.AuditEvent, len(events))}
	for i, ev := range events {
		resp.Events[i] = &credbrokerv1.AuditEvent{
			Time: timestamppb.New(ev.Time), Principal: ev.Principal, Method: ev.Method, Resource: ev.Resource,
			Code: ev.Code, TokenFingerprint: ev.TokenFingerprint, Detail: ev.Detail, PeerAddress: ev.PeerAddress,
		}
		if p := ev.Proxy; p != nil {
			resp.Events[i].ProxyCall = &credbrokerv1.ProxyCall{
				HttpMethod: p.HTTPMethod, Path: p.Path, Status: int32(p.Status), RequestBytes: p.RequestBytes, ResponseBytes: p.ResponseBytes,
			}
		}
	}
	if !next.Time.IsZero() {
		resp.NextPageToken = auditPageToken(next)
	}
	return resp, nil
}

func optionalTime(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, invalidArgument(field, "is not a valid timestamp")
	}
	t := ts.AsTime()
	if t.Before(auditTimeMin) || t.After(auditTimeMax) {
		return time.Time{}, invalidArgument(field, fmt.Sprintf("must be between %s and %s, the times the audit trail can hold",
			auditTimeMin.Format(time.RFC3339), auditTimeMax.Format(time.RFC3339)))
	}
	return t, nil
}

// auditTimeMin and auditTimeMax bound the times the audit trail can compare:
// it orders events by nanoseconds since 1970 in an int64 (store.AuditPos),
// so a bound outside them would be misread.
var auditTimeMin, auditTimeMax = time.Unix(0, 0).UTC(), time.Unix(0, math.MaxInt64).UTC()

func auditPageToken(p store.AuditPos) string {
	return base64.RawURLEncoding.EncodeToString(p.Bytes())
}

func parseAuditPageToken(tok string) (store.AuditPos, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	p, ok := store.ParseAuditPos(b)
	if err != nil || !ok || p.Time.UnixNano() <= 0 {
		return store.AuditPos{}, invalidArgument("page_token", "is not a token this server issued")
	}
	return p, nil
}
