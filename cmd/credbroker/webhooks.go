package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func webhooksCreate(s *session, args []string) error {
	var id, url, description string
	kinds, accounts := &listFlag{split: true}, &listFlag{split: true}
	fs := s.flags("ID --url URL [flags]", `Registers a webhook endpoint, webhooks/ID: the broker POSTs each credential
event from now on to URL (https, or http to a loopback address), signed
with a secret that is printed once. See the README's "Webhooks" for the
signature and how to check it.`)
	fs.StringVar(&url, "url", "", "where events are POSTed")
	fs.Var(kinds, "kind", "only events of this kind, e.g. account-state-changed (repeatable, or comma-separated); all if unset")
	fs.Var(accounts, "account", "only events about this account (repeatable, or comma-separated); all if unset")
	fs.StringVar(&description, "description", "", "what the endpoint is for")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	w := &credbrokerv1.Webhook{Url: url, Description: description}
	for _, k := range kinds.values {
		v, err := enumValue("kind", "EVENT_KIND_", k, credbrokerv1.EventKind_value)
		if err != nil {
			return err
		}
		w.Kinds = append(w.Kinds, credbrokerv1.EventKind(v))
	}
	for _, a := range accounts.values {
		w.Accounts = append(w.Accounts, resourceName("accounts", a))
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewWebhookServiceClient(conn).CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: id, Webhook: w})
		if err != nil {
			return err
		}
		fmt.Fprintln(s.stderr, "The signing secret is shown only now: give it to the receiver, which checks each delivery's signature with it.")
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintf(w, "NAME\t%s\nURL\t%s\nSIGNING SECRET\t%s\n", resp.GetWebhook().GetName(), resp.GetWebhook().GetUrl(), resp.GetSigningSecret())
		})
	})
}

func webhooksList(s *session, args []string) error {
	fs := s.flags("[flags]", "Lists the webhook endpoints and how their deliveries go.")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		hooks, err := allPages(0, func(token string) ([]*credbrokerv1.Webhook, string, error) {
			resp, err := credbrokerv1.NewWebhookServiceClient(conn).ListWebhooks(ctx, &credbrokerv1.ListWebhooksRequest{PageSize: 100, PageToken: token})
			return resp.GetWebhooks(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return err
		}
		all := &credbrokerv1.ListWebhooksResponse{Webhooks: hooks}
		now := time.Now()
		return s.print(all, func(w io.Writer) {
			fmt.Fprintln(w, "NAME\tURL\tKINDS\tFAILURES\tNEXT ATTEMPT\tLAST ATTEMPT")
			for _, h := range all.GetWebhooks() {
				d := h.GetDelivery()
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", h.GetName(), h.GetUrl(), kindsText(h.GetKinds()), d.GetFailedAttempts(),
					when(d.GetNextAttemptTime(), now), attemptText(d.GetLastAttempts(), now))
			}
		})
	})
}

func webhooksGet(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", "Shows a webhook endpoint and its last delivery attempts.")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewWebhookServiceClient(conn).GetWebhook(ctx, &credbrokerv1.GetWebhookRequest{Name: resourceName("webhooks", id)})
		if err != nil {
			return err
		}
		h, now := resp.GetWebhook(), time.Now()
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintf(w, "NAME\t%s\nURL\t%s\nKINDS\t%s\nACCOUNTS\t%s\nDESCRIPTION\t%s\nCREATED\t%s by %s\nFAILURES\t%d\nNEXT ATTEMPT\t%s\n",
				h.GetName(), h.GetUrl(), kindsText(h.GetKinds()), dash(strings.Join(h.GetAccounts(), ", ")), dash(h.GetDescription()),
				when(h.GetCreateTime(), now), h.GetCreator(), h.GetDelivery().GetFailedAttempts(), when(h.GetDelivery().GetNextAttemptTime(), now))
			for _, a := range h.GetDelivery().GetLastAttempts() {
				fmt.Fprintf(w, "ATTEMPT\t%s\n", attemptText([]*credbrokerv1.WebhookAttempt{a}, now))
			}
		})
	})
}

func webhooksDelete(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", "Removes a webhook endpoint: nothing more is delivered to it.")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewWebhookServiceClient(conn).DeleteWebhook(ctx, &credbrokerv1.DeleteWebhookRequest{Name: resourceName("webhooks", id)})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", resourceName("webhooks", id)) })
	})
}

// kindsText shows a webhook's kinds: "all" if it has none.
func kindsText(kinds []credbrokerv1.EventKind) string {
	if len(kinds) == 0 {
		return "all"
	}
	var names []string
	for _, k := range kinds {
		names = append(names, enumText("EVENT_KIND_", k))
	}
	return strings.Join(names, ",")
}

// attemptText shows the newest of attempts: when, which event, how it went.
func attemptText(attempts []*credbrokerv1.WebhookAttempt, now time.Time) string {
	if len(attempts) == 0 {
		return "-"
	}
	a := attempts[0]
	outcome := fmt.Sprintf("delivered (%d)", a.GetStatusCode())
	if a.GetError() != "" {
		outcome = a.GetError()
	}
	if a.GetGaveUp() {
		outcome += "; given up"
	}
	return fmt.Sprintf("%s %s %s: %s", when(a.GetTime(), now), enumText("EVENT_KIND_", a.GetEventKind()), dash(a.GetEventId()), outcome)
}
