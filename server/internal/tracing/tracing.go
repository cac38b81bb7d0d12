// Package tracing sends OpenTelemetry spans of every gRPC call and of
// every token request to a provider to a collector, with the standard
// OTLP/gRPC exporter. The exporter takes its settings
// (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _CERTIFICATE, _INSECURE, ...)
// and OTEL_SERVICE_NAME from the environment, as every OpenTelemetry SDK
// does. Spans carry methods, status codes, peers and URLs, never metadata
// or bodies, so no key or secret.
package tracing

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"google.golang.org/grpc"
)

// The tracing modes: Off (the default) sends nothing, OTLP sends spans
// with the OTLP exporter. Anything else is refused.
const (
	Off  = "off"
	OTLP = "otlp"
)

// Tracing is a tracer provider that exports spans. A nil Tracing is off:
// its methods do nothing.
type Tracing struct {
	provider *sdktrace.TracerProvider
}

// CheckMode accepts Off (or empty) and OTLP.
func CheckMode(mode string) error {
	switch mode {
	case Off, "", OTLP:
		return nil
	}
	return fmt.Errorf("tracing must be %q or %q, not %q", Off, OTLP, mode)
}

// New starts tracing in mode; it returns nil (off) unless mode is OTLP.
// Shut it down to release it.
func New(mode string) (*Tracing, error) {
	if mode != OTLP {
		return nil, CheckMode(mode)
	}
	exp, err := otlptracegrpc.New(context.Background())
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.Merge(resource.NewSchemaless(semconv.ServiceName("credbroker")), resource.Environment())
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	return &Tracing{provider: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))}, nil
}

// ServerOptions instrument the gRPC server; a caller's W3C trace context
// is continued.
func (t *Tracing) ServerOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.provider), otelgrpc.WithPropagators(propagation.TraceContext{})))}
}

// WrapTransport instruments requests to providers. No trace context is
// sent to them: they are third parties.
func (t *Tracing) WrapTransport(rt http.RoundTripper) http.RoundTripper {
	if t == nil {
		return rt
	}
	return otelhttp.NewTransport(rt, otelhttp.WithTracerProvider(t.provider), otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()))
}

// Shutdown sends the spans still buffered, waiting at most timeout, and
// stops the exporter.
func (t *Tracing) Shutdown(timeout time.Duration) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = t.provider.Shutdown(ctx)
}
