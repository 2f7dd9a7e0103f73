// Command deploycontroller deploys every model version that enters
// STAGE_PRODUCTION and reports each deployment to the registry.
//
// It watches STAGE_CHANGED events into STAGE_PRODUCTION, reports
// DEPLOYMENT_STATUS_DEPLOYING, runs the deployment, and reports SUCCEEDED
// with the endpoint, or FAILED with the error. The deployment is a command of
// yours (-exec, run by sh with MODELREG_MODEL, MODELREG_VERSION,
// MODELREG_ARTIFACT_URI and MODELREG_ENVIRONMENT set; the last line it prints
// is the endpoint); without -exec it deploys nothing and reports the endpoint
// that -endpoint names.
//
// It is restartable without missing or repeating work: the watch resumes by
// itself after a server restart, -cursor-file keeps the last sequence seen
// across restarts of the controller itself, and each report has a request id
// derived from the event, so a replayed event records nothing twice.
//
//	deploycontroller -addr 127.0.0.1:50051 -actor deployer -environment prod \
//	    -exec ./deploy.sh -cursor-file .deploycontroller.cursor
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/protobuf/proto"

	modelreg "modelreg/client"
	pb "modelreg/client/modelregv1"
)

type config struct {
	addr, token, actor, caCert string
	environment                string
	exec                       string
	endpoint                   string
	models                     []string
	cursorFile                 string
	afterSequence              int64 // -1: the cursor file, else now
	exitWhenIdle               bool
}

func main() {
	cfg := config{}
	flag.StringVar(&cfg.addr, "addr", envOr("MODELREG_ADDRESS", "127.0.0.1:50051"), "the registry (host:port)")
	flag.StringVar(&cfg.token, "token", os.Getenv("MODELREG_TOKEN"), "bearer token (needs the deployer role)")
	flag.StringVar(&cfg.actor, "actor", envOr("MODELREG_ACTOR", "deployer"), "identity on a server in local mode")
	flag.StringVar(&cfg.caCert, "ca-cert", os.Getenv("MODELREG_CA_CERT"), "PEM file of the server's CA; turns TLS on")
	flag.StringVar(&cfg.environment, "environment", "prod", "the environment deployed to")
	flag.StringVar(&cfg.exec, "exec", "", "the deployment command (sh -c); its last line of output is the endpoint")
	flag.StringVar(&cfg.endpoint, "endpoint", "https://{model}.serving.internal/v{version}", "the endpoint reported without -exec")
	models := flag.String("models", "", "only these models (comma-separated); default: all")
	flag.StringVar(&cfg.cursorFile, "cursor-file", "", "keeps the last sequence seen across restarts")
	flag.Int64Var(&cfg.afterSequence, "after-sequence", -1, "start after this event (0 = replay all); default: the cursor file, else now")
	flag.BoolVar(&cfg.exitWhenIdle, "exit-when-idle", false, "exit at the first heartbeat: every event so far is handled")
	flag.Parse()
	if *models != "" {
		cfg.models = strings.Split(*models, ",")
	}
	// SIGTERM (from a supervisor) and Ctrl-C stop the loop cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	opts := []modelreg.Option{modelreg.WithToken(cfg.token), modelreg.WithActor(cfg.actor)}
	if cfg.caCert != "" {
		opts = append(opts, modelreg.WithCACert(cfg.caCert))
	}
	registry, err := modelreg.Dial(cfg.addr, opts...)
	if err != nil {
		return err
	}
	defer registry.Close()

	request := &pb.WatchTransitionsRequest{
		Models:   cfg.models,
		Types:    []pb.EventType{pb.EventType_EVENT_TYPE_STAGE_CHANGED},
		ToStages: []pb.Stage{pb.Stage_STAGE_PRODUCTION},
	}
	if cfg.afterSequence >= 0 {
		request.AfterSequence = proto.Uint64(uint64(cfg.afterSequence))
	} else if cursor, ok, err := readCursor(cfg.cursorFile); err != nil {
		return err
	} else if ok {
		request.AfterSequence = proto.Uint64(cursor)
	}
	watch := registry.Watch(ctx, request)
	defer watch.Close()
	fmt.Fprintf(out, "watching %s for versions entering STAGE_PRODUCTION\n", cfg.addr)

	handled := 0
	for {
		item, err := watch.Recv()
		if err != nil {
			return err
		}
		if event := item.GetEvent(); event != nil {
			if err := deploy(ctx, registry, cfg, event, out); err != nil {
				return err
			}
			handled++
		}
		// The cursor moves on heartbeats too; saving it then keeps restarts cheap.
		if cursor, ok := watch.Cursor(); ok {
			if err := writeCursor(cfg.cursorFile, cursor); err != nil {
				return err
			}
		}
		if item.GetHeartbeat() != nil && cfg.exitWhenIdle {
			cursor, _ := watch.Cursor()
			fmt.Fprintf(out, "idle after %d deployment(s); cursor %d\n", handled, cursor)
			return nil
		}
	}
}

// deploy rolls out the version of one STAGE_CHANGED→PRODUCTION event and reports each step.
func deploy(ctx context.Context, registry *modelreg.Client, cfg config, event *pb.RegistryEvent, out io.Writer) error {
	report := func(status pb.DeploymentStatus, endpoint, message string) error {
		_, err := registry.ReportDeployment(ctx, &pb.ReportDeploymentRequest{
			Model: event.Model, Version: event.Version, Environment: cfg.environment,
			Status: status, Endpoint: endpoint, Message: message,
			// Derived from the event: a replayed event records nothing twice.
			RequestId: fmt.Sprintf("deploy-%d-%s-%d", event.Sequence, cfg.environment, status),
		})
		if err != nil {
			return fmt.Errorf("report %s of %s v%d: %w (%v)", status, event.Model, event.Version, err, modelreg.FieldViolations(err))
		}
		return nil
	}
	version, err := registry.GetVersion(ctx, &pb.GetVersionRequest{Model: event.Model, Version: event.Version})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "event %d: %s v%d entered PRODUCTION; deploying %s to %s\n",
		event.Sequence, event.Model, event.Version, version.Version.ArtifactUri, cfg.environment)
	if err := report(pb.DeploymentStatus_DEPLOYMENT_STATUS_DEPLOYING, "", ""); err != nil {
		return err
	}
	endpoint, failure := rollOut(ctx, cfg, version.Version)
	if failure != nil {
		fmt.Fprintf(out, "event %d: FAILED: %v\n", event.Sequence, failure)
		return report(pb.DeploymentStatus_DEPLOYMENT_STATUS_FAILED, "", tail(failure.Error(), 4000))
	}
	fmt.Fprintf(out, "event %d: SUCCEEDED at %s\n", event.Sequence, endpoint)
	return report(pb.DeploymentStatus_DEPLOYMENT_STATUS_SUCCEEDED, endpoint, "")
}

// rollOut runs the deployment command, or names the endpoint -endpoint describes.
func rollOut(ctx context.Context, cfg config, v *pb.ModelVersion) (string, error) {
	if cfg.exec == "" {
		r := strings.NewReplacer("{model}", v.Model, "{version}", strconv.FormatInt(v.Version, 10))
		return r.Replace(cfg.endpoint), nil
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", cfg.exec)
	cmd.Env = append(os.Environ(),
		"MODELREG_MODEL="+v.Model,
		"MODELREG_VERSION="+strconv.FormatInt(v.Version, 10),
		"MODELREG_ARTIFACT_URI="+v.ArtifactUri,
		"MODELREG_ENVIRONMENT="+cfg.environment,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

func readCursor(path string) (uint64, bool, error) {
	if path == "" {
		return 0, false, nil
	}
	text, err := ioutil.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	cursor, err := strconv.ParseUint(strings.TrimSpace(string(text)), 10, 64)
	return cursor, err == nil, err
}

// writeCursor replaces the file atomically: a crash leaves the old or the new cursor, never half of one.
func writeCursor(path string, cursor uint64) error {
	if path == "" {
		return nil
	}
	tmp := path + ".tmp"
	if err := ioutil.WriteFile(tmp, []byte(strconv.FormatUint(cursor, 10)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
