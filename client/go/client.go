// Package modelreg is the Go client of the modelreg model registry.
//
// The messages and the gRPC stub are generated from proto/ into the package
// modelreg/client/modelregv1 by generate.sh (protoc-gen-go and
// protoc-gen-go-grpc; never committed). This package adds a thin layer:
//
//   - Dial connects with a token (WithToken), an actor for a server in local
//     mode (WithActor) or a CA certificate for TLS (WithCACert), and attaches
//     the caller's identity to every call;
//   - Client.Watch is a WatchTransitions subscription that resumes after a
//     broken connection from the last sequence it saw;
//   - FieldViolations reads the google.rpc.BadRequest of an INVALID_ARGUMENT.
//
// Every RPC is a method of Client (it embeds the generated
// ModelRegistryServiceClient), called with the generated request types.
package modelreg

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/ioutil"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	pb "modelreg/client/modelregv1"
)

// ActorHeader is the metadata key naming the caller while the server runs without tokens.
const ActorHeader = "x-modelreg-actor"

type options struct {
	token, actor string
	caPEM        []byte
	caFile       string
	tls          *bool
	dialOptions  []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithToken sends `authorization: Bearer TOKEN` on every call.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithActor sends `x-modelreg-actor: NAME` on every call: the identity on a
// server in local mode (no token file).
func WithActor(actor string) Option { return func(o *options) { o.actor = actor } }

// WithCACert trusts only the CA in this PEM file for the server's
// certificate, and turns TLS on.
func WithCACert(path string) Option { return func(o *options) { o.caFile = path } }

// WithCACertPEM is WithCACert with the PEM itself.
func WithCACertPEM(pem []byte) Option { return func(o *options) { o.caPEM = pem } }

// WithTLS forces TLS on (with the system's roots when no CA is given) or off.
// Default: TLS exactly when a CA certificate is given.
func WithTLS(on bool) Option { return func(o *options) { o.tls = &on } }

// WithDialOptions adds gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// identity attaches the caller's identity to every call.
type identity map[string]string

func (id identity) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return id, nil
}

// RequireTransportSecurity is false: a loopback server in local mode speaks plaintext.
func (identity) RequireTransportSecurity() bool { return false }

// Client is a ModelRegistryService client whose calls carry the caller's identity.
type Client struct {
	pb.ModelRegistryServiceClient
	// Conn is the connection every call goes through.
	Conn *grpc.ClientConn
	// Target is the address this client talks to.
	Target string
}

// Dial opens a client to the registry at target (host:port). The connection
// is made in the background; the first call waits for it or fails with
// UNAVAILABLE.
func Dial(target string, opts ...Option) (*Client, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.caFile != "" {
		pem, err := ioutil.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("modelreg: CA certificate: %w", err)
		}
		o.caPEM = pem
	}
	useTLS := o.caPEM != nil
	if o.tls != nil {
		if !*o.tls && o.caPEM != nil {
			return nil, errors.New("modelreg: a CA certificate was given with WithTLS(false)")
		}
		useTLS = *o.tls
	}
	dial := []grpc.DialOption{
		// gRPC's default reconnect backoff grows to two minutes; a watch that
		// resumes after a server restart should not sit that long on a server
		// that is already back.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if useTLS {
		config := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.caPEM != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(o.caPEM) {
				return nil, errors.New("modelreg: no certificate in the CA PEM")
			}
			config.RootCAs = pool
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	id := identity{}
	if o.token != "" {
		id["authorization"] = "Bearer " + o.token
	}
	if o.actor != "" {
		id[ActorHeader] = o.actor
	}
	if len(id) > 0 {
		dial = append(dial, grpc.WithPerRPCCredentials(id))
	}
	conn, err := grpc.Dial(target, append(dial, o.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{ModelRegistryServiceClient: pb.NewModelRegistryServiceClient(conn), Conn: conn, Target: target}, nil
}

// Close closes the connection; calls in flight end with CANCELED.
func (c *Client) Close() error { return c.Conn.Close() }

// Health is the server's grpc.health.v1 status ("" for the whole server).
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	reply, err := healthpb.NewHealthClient(c.Conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return reply.Status, nil
}

// WaitUntilServing polls the health check until it answers SERVING or ctx ends.
func (c *Client) WaitUntilServing(ctx context.Context) error {
	var last interface{}
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		status, err := c.Health(attempt, "")
		cancel()
		if err == nil && status == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = status
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("modelreg: %s not SERVING (last: %v): %w", c.Target, last, ctx.Err())
		case <-time.After(50 * time.Millisecond): // poll interval
		}
	}
}

// AllEvents returns every event matching req after req.AfterSequence, in
// sequence order, fetching page after page (ListEvents returns one page).
func (c *Client) AllEvents(ctx context.Context, req *pb.ListEventsRequest) ([]*pb.RegistryEvent, error) {
	var out []*pb.RegistryEvent
	page := proto.Clone(req).(*pb.ListEventsRequest)
	for {
		reply, err := c.ListEvents(ctx, page)
		if err != nil {
			return nil, err
		}
		out = append(out, reply.Events...)
		if reply.NextPageToken == "" {
			return out, nil
		}
		page.PageToken = reply.NextPageToken
	}
}
