package listeners

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/credbroker/credbroker/server/internal/mtls"
)

// HTTPOptions are what differ between the broker's HTTP listeners.
type HTTPOptions struct {
	// ReadTimeout bounds a whole request, body included: no slow-drip
	// uploads.
	ReadTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers; 0 is net/http's default.
	MaxHeaderBytes int
	// Certs, if set, proves the principals of client certificates, which
	// the listener then asks for (when there are client CAs).
	Certs *mtls.HTTPVerifier
}

// HTTP is an HTTP server the broker runs beside gRPC. Its methods do
// nothing on a nil HTTP (a listener that is off).
type HTTP struct {
	name string
	srv  *http.Server
	lis  net.Listener
}

// NewHTTP is the listener named name (in logs) on lis, an HTTP server of
// h that serves TLS when t has a certificate: 10 s for a request's
// headers, 2 minutes for an idle connection, and its errors logged to log
// as warnings.
func (t TLS) NewHTTP(name string, lis net.Listener, h http.Handler, o HTTPOptions, log *slog.Logger) *HTTP {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       o.ReadTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if o.Certs != nil {
		srv.ConnContext = o.Certs.ConnContext
	}
	if t.Cert != nil {
		srv.TLSConfig = mtls.ServerTLSConfig(*t.Cert, o.Certs != nil && t.ClientCAs != nil)
	}
	return &HTTP{name: name, srv: srv, lis: lis}
}

// Name is what logs call the listener.
func (h *HTTP) Name() string { return h.name }

// Addr is the address it listens on; nil when it is off.
func (h *HTTP) Addr() net.Addr {
	if h == nil {
		return nil
	}
	return h.lis.Addr()
}

// Serve serves until Shutdown, after which it returns nil.
func (h *HTTP) Serve() error {
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

// Shutdown stops the server, giving requests in flight timeout to finish;
// the channel is closed once it has stopped.
func (h *HTTP) Shutdown(timeout time.Duration) <-chan struct{} {
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

// Close closes the listener of a server that was never served; after
// Serve, Shutdown has closed it already.
func (h *HTTP) Close() error {
	if h == nil {
		return nil
	}
	if err := Close(h.lis); err != nil {
		return fmt.Errorf("%s: %w", h.name, err)
	}
	return nil
}
