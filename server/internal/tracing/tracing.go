package server

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

// TracingOTLP turns tracing on (Config.Tracing); anything else but
// TracingOff is refused.
const (
	TracingOff  = "off"
	TracingOTLP = "otlp"
)

// tracing sends spans of every gRPC call and of every token request to a
// provider to an OpenTelemetry collector, with the standard OTLP/gRPC
// exporter. The exporter takes its settings (OTEL_EXPORTER_OTLP_ENDPOINT,
// _HEADERS, _CERTIFICATE, _INSECURE, ...) and OTEL_SERVICE_NAME from the
// environment, as every OpenTelemetry SDK does. Spans carry methods, status
// codes, peers and URLs, never metadata or bodies, so no key or secret. A
// nil tracing is off: its methods do nothing.
type tracing struct {
	provider *sdktrace.TracerProvider
}

// checkTracingMode accepts TracingOff (or empty) and TracingOTLP.
func checkTracingMode(mode string) error {
	switch mode {
	case TracingOff, "", TracingOTLP:
		return nil
	}
	return fmt.Errorf("tracing must be %q or %q, not %q", TracingOff, TracingOTLP, mode)
}

func newTracing(mode string) (*tracing, error) {
	if mode != TracingOTLP {
		return nil, checkTracingMode(mode)
	}
	exp, err := otlptracegrpc.New(context.Background())
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.Merge(resource.NewSchemaless(semconv.ServiceName("credbroker")), resource.Environment())
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	return &tracing{provider: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))}, nil
}

// serverOptions instrument the gRPC server; a caller's W3C trace context
// is continued.
func (t *tracing) serverOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.provider), otelgrpc.WithPropagators(propagation.TraceContext{})))}
}

// wrapTransport instruments requests to providers. No trace context is
// sent to them: they are third parties.
func (t *tracing) wrapTransport(rt http.RoundTripper) http.RoundTripper {
	if t == nil {
		return rt
	}
	return otelhttp.NewTransport(rt, otelhttp.WithTracerProvider(t.provider), otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()))
}

// shutdown sends the spans still buffered.
func (t *tracing) shutdown(timeout time.Duration) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = t.provider.Shutdown(ctx)
}
