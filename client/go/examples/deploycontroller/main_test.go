package main

import (
	"bytes"
	"context"
	"io/ioutil"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	modelreg "modelreg/client"
	"modelreg/client/internal/testserver"
	pb "modelreg/client/modelregv1"
)

type deployment struct {
	Status             pb.DeploymentStatus
	Endpoint, Reporter string
	Failed             bool
}

func deployments(t *testing.T, ctx context.Context, c *modelreg.Client, model string, version int64) []deployment {
	t.Helper()
	v, err := c.GetVersion(ctx, &pb.GetVersionRequest{Model: model, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	var out []deployment
	for _, d := range v.Version.Deployments {
		out = append(out, deployment{d.Status, d.Endpoint, d.ReportedBy, d.Message != ""})
	}
	return out
}

// The controller deploys exactly the versions entering PRODUCTION, reports
// each one, keeps its cursor, and a second run resumes after it.
func TestDeployControllerReportsTheDeploymentOfEveryProductionVersion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	server := testserver.Start(t, testserver.Options{})
	registry := server.Client(modelreg.WithActor("alice"))
	// No approval needed, so that each move applies at once.
	_, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: "churn", Policy: &pb.Policy{ApprovalRequiredFor: &pb.StageList{}}})
	if err != nil {
		t.Fatal(err)
	}
	promote := func(version int64) {
		t.Helper()
		if _, err := registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: "churn",
			ArtifactUri: "s3://models/churn/" + strconv.FormatInt(version, 10) + "/", TargetStage: pb.Stage_STAGE_STAGING}); err != nil {
			t.Fatal(err)
		}
		if _, err := registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: "churn", Version: version, TargetStage: pb.Stage_STAGE_PRODUCTION}); err != nil {
			t.Fatal(err)
		}
	}
	promote(1)
	promote(2) // archives version 1
	if _, err := registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: "churn", ArtifactUri: "s3://models/churn/3/", TargetStage: pb.Stage_STAGE_STAGING}); err != nil {
		t.Fatal(err) // version 3 only enters STAGING: nothing to deploy
	}
	cursorFile := filepath.Join(t.TempDir(), "cursor")
	cfg := config{
		addr: server.Address(), actor: "deployer", environment: "prod",
		exec:       `echo "rolling out $MODELREG_ARTIFACT_URI"; echo "https://$MODELREG_ENVIRONMENT.example/$MODELREG_MODEL/v$MODELREG_VERSION"`,
		cursorFile: cursorFile, afterSequence: 0, exitWhenIdle: true,
	}
	var out bytes.Buffer

	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}

	for v, endpoint := range map[int64]string{1: "https://prod.example/churn/v1", 2: "https://prod.example/churn/v2"} {
		if got, want := deployments(t, ctx, registry, "churn", v), []deployment{{pb.DeploymentStatus_DEPLOYMENT_STATUS_SUCCEEDED, endpoint, "deployer", false}}; !reflect.DeepEqual(got, want) {
			t.Fatalf("v%d deployments %+v, want %+v\n%s", v, got, want, out.String())
		}
	}
	if got := deployments(t, ctx, registry, "churn", 3); got != nil {
		t.Fatalf("v3 (in STAGING) was deployed: %+v", got)
	}
	reported, err := registry.AllEvents(ctx, &pb.ListEventsRequest{Types: []pb.EventType{pb.EventType_EVENT_TYPE_DEPLOYMENT_REPORTED}})
	if err != nil {
		t.Fatal(err)
	}
	if len(reported) != 4 { // DEPLOYING and SUCCEEDED for each version
		t.Fatalf("%d DEPLOYMENT_REPORTED events, want 4", len(reported))
	}
	saved, _ := ioutil.ReadFile(cursorFile)
	cursor, _ := strconv.ParseUint(strings.TrimSpace(string(saved)), 10, 64)
	promoted, err := registry.AllEvents(ctx, &pb.ListEventsRequest{Types: []pb.EventType{pb.EventType_EVENT_TYPE_STAGE_CHANGED}})
	if err != nil {
		t.Fatal(err)
	}
	if last := promoted[len(promoted)-1].Sequence; cursor < last {
		t.Fatalf("cursor file says %d, before the last stage change %d", cursor, last)
	}

	// A second run resumes from the cursor file: it deploys version 3 once it
	// enters production, with a command that fails, and nothing it did before.
	promote3 := func() {
		if _, err := registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: "churn", Version: 3, TargetStage: pb.Stage_STAGE_PRODUCTION}); err != nil {
			t.Fatal(err)
		}
	}
	promote3()
	cfg.afterSequence, cfg.exec = -1, `echo "no capacity in $MODELREG_ENVIRONMENT" >&2; exit 3`
	out.Reset()
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := deployments(t, ctx, registry, "churn", 3); len(got) != 1 || got[0].Status != pb.DeploymentStatus_DEPLOYMENT_STATUS_FAILED || !got[0].Failed {
		t.Fatalf("v3 deployments %+v, want one FAILED with a message\n%s", got, out.String())
	}
	if strings.Count(out.String(), "entered PRODUCTION") != 1 || !strings.Contains(out.String(), "churn v3 entered PRODUCTION") {
		t.Fatalf("the second run handled other events than v3's:\n%s", out.String())
	}
	reported, err = registry.AllEvents(ctx, &pb.ListEventsRequest{Types: []pb.EventType{pb.EventType_EVENT_TYPE_DEPLOYMENT_REPORTED}})
	if err != nil {
		t.Fatal(err)
	}
	if len(reported) != 6 {
		t.Fatalf("%d DEPLOYMENT_REPORTED events after the second run, want 6", len(reported))
	}
}
