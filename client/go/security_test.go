package modelreg_test

// Tokens and TLS, against a real modelreg-server started with a token file or a test CA.

import (
	"crypto/x509"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	modelreg "modelreg/client"
	"modelreg/client/internal/testserver"
	pb "modelreg/client/modelregv1"
)

func TestTokensNoTokenIsUnauthenticatedAndAReadersWriteIsPermissionDenied(t *testing.T) {
	ctx := ctxFor(t)
	server := testserver.Start(t, testserver.Options{Tokens: []testserver.Token{
		{Identity: "alice", Roles: []string{"publisher"}},
		{Identity: "rita", Roles: []string{"reader"}},
	}})
	anonymous := server.Client(modelreg.WithActor("alice")) // the actor header is no identity here
	forged := server.Client(modelreg.WithToken("not-a-token"))
	reader := server.Client(modelreg.WithToken(server.Token("rita")))
	publisher := server.Client(modelreg.WithToken(server.Token("alice")), modelreg.WithActor("mallory"))
	create := &pb.CreateModelRequest{Name: "churn"}

	if _, err := anonymous.CreateModel(ctx, create); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v, want UNAUTHENTICATED", err)
	}
	if _, err := forged.GetModel(ctx, &pb.GetModelRequest{Name: "churn"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown token: %v, want UNAUTHENTICATED", err)
	}
	if _, err := reader.CreateModel(ctx, create); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reader's write: %v, want PERMISSION_DENIED", err)
	}
	if n := len(events(t, ctx, reader, &pb.ListEventsRequest{})); n != 0 {
		t.Fatalf("a reader reads, and nothing was written: %d events", n)
	}

	created, err := publisher.CreateModel(ctx, create)
	must(t, err)
	if created.Model.CreatedBy != "alice" {
		t.Fatalf("created_by %q, want the token's identity alice", created.Model.CreatedBy)
	}
	var got [][2]string
	for _, e := range events(t, ctx, reader, &pb.ListEventsRequest{}) {
		got = append(got, [2]string{e.Type.String(), e.Actor})
	}
	if want := [][2]string{{"EVENT_TYPE_MODEL_CREATED", "alice"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}

	// A refusal is final for a watch too: it is not retried as a broken connection.
	watch := anonymous.Watch(ctx, &pb.WatchTransitionsRequest{AfterSequence: proto.Uint64(0)})
	watch.MaxReconnects = 3
	if _, err := watch.Recv(); status.Code(err) != codes.Unauthenticated || watch.Reconnects() != 0 {
		t.Fatalf("watch without a token: %v after %d reconnects, want UNAUTHENTICATED after 0", err, watch.Reconnects())
	}
}

func TestTLSWithTheTestCA(t *testing.T) {
	ctx := ctxFor(t)
	server := testserver.Start(t, testserver.Options{TLS: true})
	trusting := server.Client(modelreg.WithActor("alice")) // trusts the test CA

	created, err := trusting.CreateModel(ctx, &pb.CreateModelRequest{Name: "churn"})
	must(t, err)
	if created.Model.CreatedBy != "alice" {
		t.Fatalf("created_by %q", created.Model.CreatedBy)
	}
	watch := trusting.Watch(ctx, &pb.WatchTransitionsRequest{AfterSequence: proto.Uint64(0)})
	first, err := watch.Recv()
	must(t, err)
	if first.GetEvent().GetType() != pb.EventType_EVENT_TYPE_MODEL_CREATED {
		t.Fatalf("first message over TLS %v, want MODEL_CREATED", first)
	}
	watch.Close()

	// The system's roots do not include the test CA, and a plaintext client gets no answer.
	systemRoots, err := modelreg.Dial(server.Address(), modelreg.WithTLS(true))
	must(t, err)
	defer systemRoots.Close()
	_, err = systemRoots.GetModel(ctx, &pb.GetModelRequest{Name: "churn"})
	var unknownAuthority x509.UnknownAuthorityError
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), unknownAuthority.Error()) {
		t.Fatalf("untrusted server: %v, want UNAVAILABLE naming %q", err, unknownAuthority.Error())
	}
	plaintext, err := modelreg.Dial(server.Address(), modelreg.WithActor("alice"))
	must(t, err)
	defer plaintext.Close()
	if _, err = plaintext.GetModel(ctx, &pb.GetModelRequest{Name: "churn"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext to a TLS server: %v, want UNAVAILABLE", err)
	}
	if _, err := modelreg.Dial(server.Address(), modelreg.WithCACert(server.CACert()), modelreg.WithTLS(false)); err == nil {
		t.Fatal("a CA with WithTLS(false) was accepted")
	}
}
