package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// eventReplica is an EventService on loopback whose log is the events
// e1, e2, e3 (resume tokens t1, t2, t3). Its first watch sends what
// follows its resume token up to e2 and breaks with UNAVAILABLE, as a
// replica that stops does; later ones send the rest and stay open.
type eventReplica struct {
	credbrokerv1.UnimplementedEventServiceServer
	watches atomic.Int32
	tokens  chan string // the resume token of each watch
	refuse  error       // if set, every watch ends with it at once
}

func (r *eventReplica) WatchEvents(req *credbrokerv1.WatchEventsRequest, stream grpc.ServerStreamingServer[credbrokerv1.WatchEventsResponse]) error {
	r.tokens <- req.GetResumeToken()
	if r.refuse != nil {
		return r.refuse
	}
	first := r.watches.Add(1) == 1
	log := []string{"t1", "t2", "t3"}
	from := 0
	for i, tok := range log {
		if tok == req.GetResumeToken() {
			from = i + 1
		}
	}
	for i := from; i < len(log); i++ {
		if first && i == 2 {
			return status.Error(codes.Unavailable, "shutting down")
		}
		if err := stream.Send(&credbrokerv1.WatchEventsResponse{Event: &credbrokerv1.Event{Id: "e" + log[i][1:]}, ResumeToken: log[i]}); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

func startEventReplica(t *testing.T, refuse error) (*eventReplica, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &eventReplica{tokens: make(chan string, 10), refuse: refuse}
	s := grpc.NewServer()
	credbrokerv1.RegisterEventServiceServer(s, r)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return r, l.Addr().String()
}

// A watch that breaks is opened again after the last event handled: every
// event comes once, in order.
func TestWatchEventsResumesAfterABreak(t *testing.T) {
	r, addr := startEventReplica(t, nil)
	c, err := client.New(addr, client.WithCallerKey("cbk_test"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []string
	done := errors.New("done")
	err = c.WatchEvents(context.Background(), &credbrokerv1.WatchEventsRequest{}, func(e *credbrokerv1.Event, token string) error {
		got = append(got, e.GetId()+"@"+token)
		if len(got) == 3 {
			return done
		}
		return nil
	})
	if !errors.Is(err, done) {
		t.Fatalf("WatchEvents = %v, want the handler's error", err)
	}
	if want := []string{"e1@t1", "e2@t2", "e3@t3"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("handled %v, want %v", got, want)
	}
	if first, second := <-r.tokens, <-r.tokens; first != "" || second != "t2" {
		t.Fatalf("watches resumed after %q then %q, want \"\" then \"t2\"", first, second)
	}
}

// An error that trying again cannot cure ends the watch with the broker's
// status.
func TestWatchEventsGivesUpOnExpiredToken(t *testing.T) {
	expired := status.Error(codes.FailedPrecondition, "resume_token: the events after it are older than the broker keeps")
	r, addr := startEventReplica(t, expired)
	c, err := client.New(addr, client.WithCallerKey("cbk_test"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.WatchEvents(context.Background(), &credbrokerv1.WatchEventsRequest{ResumeToken: "old"}, func(*credbrokerv1.Event, string) error { return nil })
	if status.Code(err) != codes.FailedPrecondition || len(r.tokens) != 1 {
		t.Fatalf("WatchEvents = %v after %d watches, want FAILED_PRECONDITION after 1", err, len(r.tokens))
	}
}

// A receiver checks a real delivery with VerifyWebhook: it passes as
// received, and fails with one byte changed or replayed ten minutes later.
func TestVerifyWebhookOnARealDelivery(t *testing.T) {
	d := newDemo(t)
	var secret atomic.Value
	got := make(chan error, 10)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s := secret.Load().(string)
		err := client.VerifyWebhook(s, r.Header, body, time.Now())
		var e credbrokerv1.Event
		switch {
		case err != nil:
		case client.VerifyWebhook(s, r.Header, append(body, ' '), time.Now()) == nil:
			err = errors.New("a changed body verified")
		case client.VerifyWebhook(s, r.Header, body, time.Now().Add(10*time.Minute)) == nil:
			err = errors.New("a delivery replayed 10 minutes later verified")
		case protojson.Unmarshal(body, &e) != nil || e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED || e.GetAccount() != "accounts/beta":
			err = fmt.Errorf("the delivery: %s", body)
		}
		got <- err
	}))
	t.Cleanup(recv.Close)
	conn, err := grpcConn(d.target, d.admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	resp, err := credbrokerv1.NewWebhookServiceClient(conn).CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "receiver", Webhook: &credbrokerv1.Webhook{Url: recv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	secret.Store(resp.GetSigningSecret())
	if _, err := credbrokerv1.NewAccountServiceClient(conn).CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: "beta",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "demo-client", ClientSecret: "demo-secret", Region: credbrokerv1.Region_REGION_US,
		}},
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}
}
