package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// httpEndpoint is an HTTP server the broker runs beside gRPC: the egress
// proxy or the ops listener. Its methods do nothing on a nil endpoint (one
// that is off).
type httpEndpoint struct {
	name string
	srv  *http.Server
	lis  net.Listener
}

// listenHTTP opens the listener for srv.
func listenHTTP(name, addr string, srv *http.Server) (*httpEndpoint, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &httpEndpoint{name: name, srv: srv, lis: lis}, nil
}

func (h *httpEndpoint) addr() net.Addr {
	if h == nil {
		return nil
	}
	return h.lis.Addr()
}

// serve serves until shutdown, after which it returns nil.
func (h *httpEndpoint) serve() error {
	var err error
	if h.srv.TLSConfig != nil {
		err = h.srv.ServeTLS(h.lis, "", "")
	} else {
		err = h.srv.Serve(h.lis)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s: %w", h.name, err)
}

// shutdown stops the server, giving requests in flight timeout to finish;
// the channel is closed once it has stopped.
func (h *httpEndpoint) shutdown(timeout time.Duration) <-chan struct{} {
	done := make(chan struct{})
	if h == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			h.srv.Close()
		}
	}()
	return done
}
