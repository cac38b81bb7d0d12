package client_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
