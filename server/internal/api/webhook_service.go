package api

import (
	"context"
	"net/url"
	"strconv"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/webhooks"
)

type webhookService struct {
	credbrokerv1.UnimplementedWebhookServiceServer
	webhooks *webhooks.Service
	events   *events.Service
	errs     errorMapper
}

// webhookPrefix starts a webhook's resource name.
const webhookPrefix = "webhooks/"

func (s *webhookService) CreateWebhook(ctx context.Context, req *credbrokerv1.CreateWebhookRequest) (*credbrokerv1.CreateWebhookResponse, error) {
	c := gate.CallFrom(ctx)
	in, err := newWebhook(req)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(in.URL) // checked by newWebhook
	if s.webhooks.RefusesHost(u.Hostname()) {
		return nil, invalidArgument("webhook.url", "is a link-local address, or a cloud metadata service's, where the broker does not deliver (--webhook-allow-link-local allows it)")
	}
	in.Creator = c.Principal
	newest, err := s.events.Newest()
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	w, signing, err := s.webhooks.Create(in, newest, c.ChangeEvent(webhookPrefix+in.ID, "to "+u.Scheme+"://"+u.Host))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.CreateWebhookResponse{Webhook: webhookProto(w, store.WebhookDelivery{}), SigningSecret: signing.Reveal()}, nil
}

// newWebhook checks a request for a webhook.
func newWebhook(req *credbrokerv1.CreateWebhookRequest) (webhooks.NewWebhook, error) {
	in := webhooks.NewWebhook{ID: req.GetWebhookId(), URL: req.GetWebhook().GetUrl(), Description: req.GetWebhook().GetDescription()}
	if err := checkAccountID("webhook_id", in.ID); err != nil {
		return in, err
	}
	if err := checkWebhookURL("webhook.url", in.URL); err != nil {
		return in, err
	}
	if err := checkText("webhook.description", in.Description, false, maxDisplayName); err != nil {
		return in, err
	}
	var err error
	in.Kinds, in.Accounts, err = parseEventFilters(req.GetWebhook().GetKinds(), req.GetWebhook().GetAccounts())
	return in, err
}

// checkWebhookURL accepts where events may be POSTed: what a provider
// endpoint may be (https, or http to a loopback address, without a user
// name or password: a receiver that wants a credential in the URL puts it
// in the path), with a valid port.
func checkWebhookURL(field, raw string) error {
	if err := checkEndpointURL(field, raw, true); err != nil {
		return err
	}
	if u, _ := url.Parse(raw); u.Port() != "" && !validPort(u.Port()) {
		return invalidArgument(field, "has a port that is not 1-65535")
	}
	return nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

func (s *webhookService) GetWebhook(ctx context.Context, req *credbrokerv1.GetWebhookRequest) (*credbrokerv1.GetWebhookResponse, error) {
	id, err := idFromName("name", req.GetName(), webhookPrefix, "{webhook_id}")
	if err != nil {
		return nil, err
	}
	w, d, err := s.webhooks.Get(id)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.GetWebhookResponse{Webhook: webhookProto(w, d)}, nil
}

func (s *webhookService) ListWebhooks(ctx context.Context, req *credbrokerv1.ListWebhooksRequest) (*credbrokerv1.ListWebhooksResponse, error) {
	size, after, err := idPage(req)
	if err != nil {
		return nil, err
	}
	ws, ds, more, err := s.webhooks.List(after, size)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	resp := &credbrokerv1.ListWebhooksResponse{Webhooks: make([]*credbrokerv1.Webhook, len(ws))}
	for i, w := range ws {
		resp.Webhooks[i] = webhookProto(w, ds[i])
	}
	if more {
		resp.NextPageToken = idPageToken(ws[len(ws)-1].ID)
	}
	return resp, nil
}

func (s *webhookService) DeleteWebhook(ctx context.Context, req *credbrokerv1.DeleteWebhookRequest) (*credbrokerv1.DeleteWebhookResponse, error) {
	id, err := idFromName("name", req.GetName(), webhookPrefix, "{webhook_id}")
	if err != nil {
		return nil, err
	}
	if err := s.webhooks.Delete(id, gate.CallFrom(ctx).ChangeEvent(webhookPrefix+id, "")); err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.DeleteWebhookResponse{}, nil
}

// webhookProto shows a webhook and how its deliveries go. It never holds
// the signing secret.
func webhookProto(w store.Webhook, d store.WebhookDelivery) *credbrokerv1.Webhook {
	p := &credbrokerv1.Webhook{
		Name: webhookPrefix + w.ID, Url: w.URL, Description: w.Description,
		CreateTime: timestamp(w.CreateTime), Creator: w.Creator,
		Delivery: &credbrokerv1.WebhookDelivery{
			NextAttemptTime: timestamp(d.NextAttempt), FailedAttempts: int32(d.Failures), LastEventId: d.LastEventID,
		},
	}
	for _, k := range w.Kinds {
		p.Kinds = append(p.Kinds, eventKindProto[k])
	}
	for _, a := range w.Accounts {
		p.Accounts = append(p.Accounts, accountPrefix+a)
	}
	for _, a := range d.Attempts {
		p.Delivery.LastAttempts = append(p.Delivery.LastAttempts, &credbrokerv1.WebhookAttempt{
			Time: timestamp(a.Time), EventId: a.EventID, EventKind: eventKindProto[a.Kind], StatusCode: int32(a.Status),
			Error: a.Error, Duration: durationpb.New(a.Duration), GaveUp: a.GaveUp,
		})
	}
	return p
}

// EventJSON is an event as webhooks deliver it: the Event message in
// proto3 JSON, with the proto's field names.
func EventJSON(e store.Event) ([]byte, error) {
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(eventProto(e))
}
