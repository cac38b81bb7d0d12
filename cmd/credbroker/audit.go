package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func auditList(s *session, args []string) error {
	var (
		account, principal string
		since              time.Duration
		limit              int
	)
	fs := s.flags("[flags]", `Lists audit events, newest first: every token handed out or refused, every
proxied call and every admin change. Tokens appear only as fingerprints.`)
	fs.StringVar(&account, "account", "", "only events about this account")
	fs.StringVar(&principal, "principal", "", "only events of this principal (callerKeys/NAME, or a certificate's: spiffe://..., dns:NAME or cn:TEXT)")
	fs.DurationVar(&since, "since", 0, "only events of this last while (e.g. 24h)")
	fs.IntVar(&limit, "limit", 50, "at most this many events")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	req := &credbrokerv1.ListAuditEventsRequest{Principal: principal, PageSize: int32(min(max(limit, 1), 1000))}
	if account != "" {
		req.Account = resourceName("accounts", account)
	}
	if since > 0 {
		req.StartTime = timestamppb.New(time.Now().Add(-since))
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		events, err := allPages(max(limit, 1), func(token string) ([]*credbrokerv1.AuditEvent, string, error) {
			req.PageToken = token
			resp, err := credbrokerv1.NewAuditServiceClient(conn).ListAuditEvents(ctx, req)
			return resp.GetEvents(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return err
		}
		all := &credbrokerv1.ListAuditEventsResponse{Events: events}
		return s.print(all, func(w io.Writer) {
			fmt.Fprintln(w, "TIME\tPRINCIPAL\tMETHOD\tRESOURCE\tCODE\tDETAIL")
			for _, e := range all.GetEvents() {
				detail := e.GetDetail()
				if p := e.GetProxyCall(); p != nil && p.GetStatus() == 0 {
					detail = fmt.Sprintf("%s %s (not forwarded)", p.GetHttpMethod(), p.GetPath())
				} else if p != nil {
					detail = fmt.Sprintf("%s %s -> %d", p.GetHttpMethod(), p.GetPath(), p.GetStatus())
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.GetTime().AsTime().UTC().Format(time.DateTime), e.GetPrincipal(),
					strings.TrimPrefix(e.GetMethod(), "/credbroker.v1."), dash(e.GetResource()), e.GetCode(), dash(detail))
			}
		})
	})
}
