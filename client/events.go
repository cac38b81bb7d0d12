package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// WatchEvents calls handle with each credential event the request asks
// for (see EventService.WatchEvents), and the resume token to continue
// after it, until ctx ends or handle returns an error (which it returns).
// A watch that breaks (a replica stopped, a network cut) is opened again,
// on any replica, after the last event handle accepted, so no event is
// missed or handled twice in between; a watcher that stores the token
// once handle has dealt with its event, and starts from it, misses none
// across restarts either. handle is also called with a nil event and a
// newer token while no event comes (every 30 seconds), so that a stored
// token does not grow older than the broker keeps events.
//
// It gives up, returning the broker's status, on an error that trying
// again cannot cure: a request the broker refuses (INVALID_ARGUMENT,
// PERMISSION_DENIED, UNAUTHENTICATED), or a resume token older than the
// events it keeps (FAILED_PRECONDITION with reason EVENTS_EXPIRED: read
// the current state from the API and watch without one).
//
//	err := c.WatchEvents(ctx, &credbrokerv1.WatchEventsRequest{ResumeToken: saved}, func(e *credbrokerv1.Event, token string) error {
//		if e != nil && e.GetKind() == credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_STATE_CHANGED {
//			alert(e)
//		}
//		return save(token)
//	})
func (c *Client) WatchEvents(ctx context.Context, req *credbrokerv1.WatchEventsRequest, handle func(e *credbrokerv1.Event, resumeToken string) error) error {
	req = proto.Clone(req).(*credbrokerv1.WatchEventsRequest)
	events := credbrokerv1.NewEventServiceClient(c.conn)
	wait := minRewatch
	for {
		got, err := watchOnce(ctx, events, req, handle)
		var handled *handleError
		switch {
		case errors.As(err, &handled):
			return handled.err
		case ctx.Err() != nil:
			return ctx.Err()
		case !retryable(err):
			return err
		}
		if got {
			wait = minRewatch
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, maxRewatch)
	}
}

// The waits between watches that break, doubled each time none got a
// response, with jitter.
const (
	minRewatch = 100 * time.Millisecond
	maxRewatch = 10 * time.Second
)

// handleError is an error of handle's, which ends the watch.
type handleError struct{ err error }

func (e *handleError) Error() string { return e.err.Error() }

// watchOnce watches until the stream breaks, moving req's resume token on
// past every response handled; got says whether any came.
func watchOnce(ctx context.Context, events credbrokerv1.EventServiceClient, req *credbrokerv1.WatchEventsRequest, handle func(*credbrokerv1.Event, string) error) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := events.WatchEvents(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		got = true
		if err := handle(resp.GetEvent(), resp.GetResumeToken()); err != nil {
			return got, &handleError{err}
		}
		req.ResumeToken = resp.GetResumeToken()
	}
}

// retryable says whether a broken watch is worth opening again.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition, codes.Unimplemented, codes.NotFound:
		return false
	}
	return true
}
