package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"

	"google.golang.org/protobuf/proto"
	modelreg "modelreg/client"
	pb "modelreg/client/modelregv1"
)

func main() {
	address := os.Getenv("MODELREG_ADDRESS")
	if address == "" {
		address = "127.0.0.1:50051"
	}
	if err := run(context.Background(), address, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, address string, out io.Writer) error {
	registry, err := modelreg.Dial(address, modelreg.WithActor("alice")) // or WithToken, WithCACert
	if err != nil {
		return err
	}
	defer registry.Close()
	bob, err := modelreg.Dial(address, modelreg.WithActor("bob")) // a second person, to approve
	if err != nil {
		return err
	}
	defer bob.Close()
	if _, err := registry.CreateModel(ctx, &pb.CreateModelRequest{Name: "churn", Description: "Customer churn classifier"}); err != nil {
		return err
	}
	v, err := registry.RegisterVersion(ctx, &pb.RegisterVersionRequest{Model: "churn", ArtifactUri: "s3://models/churn/1/",
		RequestId: "ci-run-7", TrainingMetrics: map[string]float64{"auc": 0.91}, TargetStage: pb.Stage_STAGE_STAGING})
	if err != nil {
		return err
	}
	asked, err := registry.TransitionStage(ctx, &pb.TransitionStageRequest{Model: "churn", Version: v.Version.Version,
		TargetStage: pb.Stage_STAGE_PRODUCTION, Comment: "beats the baseline"})
	if err != nil {
		return err
	}
	if _, err := bob.ApproveTransition(ctx, &pb.ApproveTransitionRequest{RequestId: asked.Request.GetId()}); err != nil {
		return err
	}
	watch := registry.Watch(ctx, &pb.WatchTransitionsRequest{Models: []string{"churn"}, AfterSequence: proto.Uint64(0)}) // 0 = replay from the start
	defer watch.Close()
	for {
		item, err := watch.Recv()
		if err != nil {
			return err
		}
		event := item.GetEvent()
		if event == nil {
			return nil // a heartbeat is a bookmark: every event so far has arrived
		}
		fmt.Fprintln(out, event.Sequence, event.Type, event.ToStage)
	}
}
