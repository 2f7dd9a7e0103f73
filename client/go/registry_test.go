package modelreg_test

// End-to-end tests of the Go client against a real modelreg-server (see
// internal/testserver): every call goes through the generated code and the
// thin layer over it.

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	modelreg "modelreg/client"
	"modelreg/client/internal/testserver"
	pb "modelreg/client/modelregv1"
)

const model = "fraud-detector"

// ungoverned is a policy that needs no approval at all: the list is present and empty.
func ungoverned() *pb.Policy {
	return &pb.Policy{ApprovalRequiredFor: &pb.StageList{}}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func events(t *testing.T, ctx context.Context, c *modelreg.Client, req *pb.ListEventsRequest) []*pb.RegistryEvent {
	t.Helper()
	all, err := c.AllEvents(ctx, req)
	must(t, err)
	return all
}

func lastSequence(t *testing.T, ctx context.Context, c *modelreg.Client) uint64 {
	all := events(t, ctx, c, &pb.ListEventsRequest{})
	if len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Sequence
}

func TestEmptyApprovalListSurvivesTheRoundTripAndLetsProductionApplyAtOnce(t *testing.T) {
	ctx := ctxFor(t)
	registry := testserver.Start(t, testserver.Options{}).Client(modelreg.WithActor("alice"))

	_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: model, Policy: ungoverned()})
	must(t, err)
	_, err = registry.CreateModel(ctx, &pb.CreateModelRequest{Name: "governed"})
	must(t, err)
	got, err := registry.GetModel(ctx, &pb.GetModelRequest{Name: model})
	must(t, err)
	governed, err := registry.GetModel(ctx, &pb.GetModelRequest{Name: "governed"})
	must(t, err)

	// Present and empty is not absent: the server kept "no stage needs
	// approval", where a model without a policy reads back the default.
	if list := got.Model.GetPolicy().GetApprovalRequiredFor(); list == nil || len(list.Stages) != 0 {
		t.Fatalf("approval_required_for = %v, want present and empty", list)
	}
	if stages := governed.Model.GetPolicy().GetApprovalRequiredFor().GetStages(); !reflect.DeepEqual(stages, []pb.Stage{pb.Stage_STAGE_PRODUCTION}) {
		t.Fatalf("default approval_required_for = %v, want [STAGE_PRODUCTION]", stages)
	}
	if got.Model.CreatedBy != "alice" {
		t.Fatalf("created_by = %q", got.Model.CreatedBy)
	}
	// And it is obeyed: STAGING to PRODUCTION applies without a request.
	v, err := registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: model, ArtifactUri: "s3://models/fraud/1/", TargetStage: pb.Stage_STAGE_STAGING})
	must(t, err)
	moved, err := registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: model, Version: v.Version.Version, TargetStage: pb.Stage_STAGE_PRODUCTION})
	must(t, err)
	if moved.Request != nil || moved.Version.GetStage() != pb.Stage_STAGE_PRODUCTION {
		t.Fatalf("transition = %v, want applied", moved)
	}
}

func TestRegisterVersionRetryWithTheSameRequestIDReturnsTheOriginal(t *testing.T) {
	ctx := ctxFor(t)
	registry := testserver.Start(t, testserver.Options{}).Client(modelreg.WithActor("alice"))
	_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: model, Policy: ungoverned()})
	must(t, err)
	req := &pb.RegisterVersionRequest{
		Model: model, ArtifactUri: "s3://models/fraud/1/", RequestId: "ci-run-42",
		TrainingMetrics: map[string]float64{"accuracy": 0.93},
	}

	first, err := registry.RegisterVersion(ctx, req)
	must(t, err)
	retry, err := registry.RegisterVersion(ctx, req)
	must(t, err)

	if first.Version.Version != 1 || retry.Version.Version != 1 {
		t.Fatalf("versions %d and %d, want 1 and 1", first.Version.Version, retry.Version.Version)
	}
	if !proto.Equal(first.Version.CreateTime, retry.Version.CreateTime) {
		t.Fatalf("the retry has another create_time: %v vs %v", retry.Version.CreateTime, first.Version.CreateTime)
	}
	registered := events(t, ctx, registry, &pb.ListEventsRequest{Model: model, Types: []pb.EventType{pb.EventType_EVENT_TYPE_VERSION_REGISTERED}})
	if len(registered) != 1 {
		t.Fatalf("%d VERSION_REGISTERED events, want 1", len(registered))
	}
	// The same id with a different request is refused; a new id is a new version.
	changed := proto.Clone(req).(*pb.RegisterVersionRequest)
	changed.ArtifactUri = "s3://models/fraud/other/"
	if _, err := registry.RegisterVersion(ctx, changed); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("reused request id with another request: %v, want INVALID_ARGUMENT", err)
	}
	changed.RequestId = "ci-run-43"
	other, err := registry.RegisterVersion(ctx, changed)
	must(t, err)
	if other.Version.Version != 2 {
		t.Fatalf("new request id gave version %d, want 2", other.Version.Version)
	}
}

func TestRefusedCallsFieldViolationsAreRead(t *testing.T) {
	ctx := ctxFor(t)
	registry := testserver.Start(t, testserver.Options{}).Client(modelreg.WithActor("alice"))

	_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: "Not A Valid Name!"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad name: %v, want INVALID_ARGUMENT", err)
	}
	violations := modelreg.FieldViolations(err)
	if len(violations) != 1 || violations[0].Field != "name" || violations[0].Description == "" {
		t.Fatalf("violations = %+v, want one on name with a description", violations)
	}
	if n := len(events(t, ctx, registry, &pb.ListEventsRequest{})); n != 0 {
		t.Fatalf("%d events after a refused call, want 0", n)
	}

	// Every bad field of one request is reported at once.
	_, err = registry.CreateModel(ctx, &pb.CreateModelRequest{Name: model, Policy: ungoverned()})
	must(t, err)
	_, err = registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: model, TrainingMetrics: map[string]float64{"accuracy": math.NaN()}})
	fields := map[string]bool{}
	metric := false
	for _, v := range modelreg.FieldViolations(err) {
		fields[v.Field] = true
		metric = metric || len(v.Field) >= len("training_metrics") && v.Field[:len("training_metrics")] == "training_metrics"
	}
	if !fields["artifact_uri"] || !metric {
		t.Fatalf("violations %v, want artifact_uri and training_metrics…", fields)
	}

	// Another code carries other details, and no field violations.
	_, err = registry.GetModel(ctx, &pb.GetModelRequest{Name: "no-such-model"})
	if status.Code(err) != codes.NotFound || modelreg.FieldViolations(err) != nil {
		t.Fatalf("missing model: %v with violations %v", err, modelreg.FieldViolations(err))
	}
	var resource string
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ResourceInfo); ok {
			resource = info.ResourceName
		}
	}
	if resource != "no-such-model" {
		t.Fatalf("ResourceInfo names %q, want no-such-model", resource)
	}
}

// collector drains a Watch on a goroutine so the test can wait on what arrived.
type collector struct {
	watch *modelreg.Watch
	mu    sync.Mutex
	cond  *sync.Cond
	items []*pb.WatchTransitionsResponse
	err   error
	done  bool
}

func collect(w *modelreg.Watch) *collector {
	c := &collector{watch: w}
	c.cond = sync.NewCond(&c.mu)
	go func() {
		for {
			item, err := w.Recv()
			c.mu.Lock()
			if err != nil {
				c.err, c.done = err, true
				c.cond.Broadcast()
				c.mu.Unlock()
				return
			}
			c.items = append(c.items, item)
			c.cond.Broadcast()
			c.mu.Unlock()
		}
	}()
	return c
}

// waitCaughtUp waits for a heartbeat bookmarking sequence: every matching event up to it was sent.
func (c *collector) waitCaughtUp(t *testing.T, sequence uint64) {
	t.Helper()
	timer := time.AfterFunc(30*time.Second, func() { c.watch.Close() }) // a stuck watch fails the test
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for _, item := range c.items {
			if hb := item.GetHeartbeat(); hb != nil && hb.Sequence >= sequence {
				return
			}
		}
		if c.done {
			t.Fatalf("watch ended before a heartbeat at %d: %v", sequence, c.err)
		}
		c.cond.Wait()
	}
}

func (c *collector) stop() {
	c.watch.Close()
	c.mu.Lock()
	for !c.done {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

func (c *collector) events() []*pb.RegistryEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*pb.RegistryEvent
	for _, item := range c.items {
		if e := item.GetEvent(); e != nil {
			out = append(out, e)
		}
	}
	return out
}

func sequences(events []*pb.RegistryEvent) []uint64 {
	out := []uint64{}
	for _, e := range events {
		out = append(out, e.Sequence)
	}
	return out
}

func TestWatchFromZeroResumesAfterAServerRestartWithoutGapOrDuplicate(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		sig := sig
		t.Run(sig.String(), func(t *testing.T) {
			ctx := ctxFor(t)
			server := testserver.Start(t, testserver.Options{})
			registry := server.Client(modelreg.WithActor("alice"))
			_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: model, Policy: ungoverned()})
			must(t, err)
			_, err = registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: model, ArtifactUri: "s3://models/fraud/1/", TargetStage: pb.Stage_STAGE_STAGING})
			must(t, err)
			watch := registry.Watch(ctx, &pb.WatchTransitionsRequest{Models: []string{model}, AfterSequence: proto.Uint64(0)})
			watch.InitialBackoff, watch.MaxBackoff = 50*time.Millisecond, 500*time.Millisecond
			c := collect(watch)
			c.waitCaughtUp(t, lastSequence(t, ctx, registry))
			// The registered events arrived, replayed from the beginning.
			var types []pb.EventType
			for _, e := range c.events() {
				types = append(types, e.Type)
			}
			want := []pb.EventType{pb.EventType_EVENT_TYPE_MODEL_CREATED, pb.EventType_EVENT_TYPE_VERSION_REGISTERED, pb.EventType_EVENT_TYPE_STAGE_CHANGED}
			if !reflect.DeepEqual(types, want) {
				t.Fatalf("replayed %v, want %v", types, want)
			}
			_, err = registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: model, Version: 1, TargetStage: pb.Stage_STAGE_PRODUCTION})
			must(t, err)
			c.waitCaughtUp(t, lastSequence(t, ctx, registry))
			seenBefore := len(c.events())

			// Stop the server under the stream, start it on the same port and
			// database, and commit events at once, while the watch reconnects.
			code := server.Stop(sig)
			if sig == syscall.SIGTERM && code != 0 {
				t.Fatalf("graceful shutdown exited %d:\n%s", code, server.Log())
			}
			server.Start()
			// The client's connection may still be backing off from the refused
			// reconnects: this call waits for it instead of failing fast.
			_, err = registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: model, ArtifactUri: "s3://models/fraud/2/", TargetStage: pb.Stage_STAGE_STAGING}, grpc.WaitForReady(true))
			must(t, err)
			_, err = registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: model, Version: 2, TargetStage: pb.Stage_STAGE_PRODUCTION})
			must(t, err)
			_, err = registry.SetAlias(ctx, &pb.SetAliasRequest{Model: model, Alias: "champion", Version: 2})
			must(t, err)
			end := lastSequence(t, ctx, registry)
			c.waitCaughtUp(t, end)
			c.stop()

			if watch.Reconnects() < 1 {
				t.Fatalf("reconnects = %d, want at least 1", watch.Reconnects())
			}
			if seenBefore != 4 {
				t.Fatalf("%d events before the restart, want 4", seenBefore)
			}
			if cursor, ok := watch.Cursor(); !ok || cursor != end {
				t.Fatalf("cursor = %d (%v), want %d", cursor, ok, end)
			}
			logged := events(t, ctx, registry, &pb.ListEventsRequest{Model: model})
			watched := c.events()
			if got, want := sequences(watched), sequences(logged); !reflect.DeepEqual(got, want) {
				t.Fatalf("watch %v != ListEvents %v", got, want)
			}
			for i := range watched {
				if watched[i].Hash != logged[i].Hash {
					t.Fatalf("event %d: hash %s != %s", watched[i].Sequence, watched[i].Hash, logged[i].Hash)
				}
			}
			// The last message is a heartbeat bookmarking the end of the log.
			last := c.items[len(c.items)-1]
			if last.GetHeartbeat() == nil || last.GetHeartbeat().Sequence != end {
				t.Fatalf("last message %v, want a heartbeat at %d", last, end)
			}
		})
	}
}

func TestWatchFromNowAndFiltersAndTheCursorFollowsHeartbeats(t *testing.T) {
	ctx := ctxFor(t)
	registry := testserver.Start(t, testserver.Options{}).Client(modelreg.WithActor("alice"))
	_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: model, Policy: ungoverned()})
	must(t, err)
	_, err = registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: model, ArtifactUri: "s3://models/fraud/1/"})
	must(t, err)
	end := lastSequence(t, ctx, registry)

	fromNow := collect(registry.Watch(ctx, &pb.WatchTransitionsRequest{Models: []string{model}}))
	staged := collect(registry.Watch(ctx, &pb.WatchTransitionsRequest{
		Types: []pb.EventType{pb.EventType_EVENT_TYPE_STAGE_CHANGED}, ToStages: []pb.Stage{pb.Stage_STAGE_STAGING},
		AfterSequence: proto.Uint64(0),
	}))
	fromNow.waitCaughtUp(t, end)
	for _, stage := range []pb.Stage{pb.Stage_STAGE_STAGING, pb.Stage_STAGE_PRODUCTION} {
		_, err = registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: model, Version: 1, TargetStage: stage})
		must(t, err)
	}
	fromNow.waitCaughtUp(t, end+2)
	staged.waitCaughtUp(t, end+2)
	fromNow.stop()
	staged.stop()

	if first := fromNow.items[0].GetHeartbeat(); first == nil || first.Sequence != end {
		t.Fatalf("first message %v, want a heartbeat at %d", fromNow.items[0], end)
	}
	if got := sequences(fromNow.events()); !reflect.DeepEqual(got, []uint64{end + 1, end + 2}) {
		t.Fatalf("from now: %v, want [%d %d]", got, end+1, end+2)
	}
	var got []string
	for _, e := range staged.events() {
		got = append(got, fmt.Sprint(e.Sequence, e.ToStage))
	}
	if want := []string{fmt.Sprint(end+1, pb.Stage_STAGE_STAGING)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("filtered: %v, want %v", got, want)
	}
	if cursor, _ := staged.watch.Cursor(); cursor != end+2 {
		t.Fatalf("filtered watch cursor %d, want %d (moved by the heartbeat)", cursor, end+2)
	}
}
