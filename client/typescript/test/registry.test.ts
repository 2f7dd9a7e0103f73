/**
 * End-to-end tests of the TypeScript client against a real modelreg-server
 * (see server.ts): every call goes through the generated code and the thin
 * layer over it.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, test } from "node:test";
import {
  Code,
  EventType,
  Stage,
  errorCode,
  errorDetail,
  fieldViolations,
  googleRpc,
  type RegistryClient,
  type RegistryEvent,
} from "../src/index.js";
import { collect, rejection, startServer, type ServerProcess } from "./server.js";
import { Collector } from "./watcher.js";

const MODEL = "fraud-detector";
/** A policy that needs no approval at all: the list is present and empty. */
const UNGOVERNED = { approvalRequiredFor: { stages: [] } };

async function lastSequence(registry: RegistryClient): Promise<bigint> {
  const events = await collect(registry.listEvents());
  return events.length ? events[events.length - 1].sequence : 0n;
}

/** The watch delivered exactly the log: same sequences and hashes, in order, no gap, no duplicate. */
function assertSameEvents(watched: RegistryEvent[], logged: RegistryEvent[]) {
  const got = watched.map((e) => e.sequence);
  assert.equal(new Set(got).size, got.length, `duplicates in the watch: ${got}`);
  assert.deepEqual(got, logged.map((e) => e.sequence));
  assert.deepEqual(watched.map((e) => e.hash), logged.map((e) => e.hash));
}

describe("against a local-mode server", () => {
  let server: ServerProcess;
  let registry: RegistryClient;

  beforeEach(async () => {
    server = await startServer();
    registry = server.client({ actor: "alice" });
  });
  afterEach(async () => {
    registry.close();
    await server.dispose();
  });

  test("an explicitly empty approval_required_for survives the round trip and lets production apply at once", async () => {
    const created = await registry.createModel({ name: MODEL, description: "card fraud", policy: UNGOVERNED });
    const governed = await registry.createModel({ name: "governed" });

    const fetched = await registry.getModel(MODEL);

    // Present and empty is not absent: the server kept "no stage needs
    // approval", where a model without a policy reads back the default.
    assert.notEqual(fetched.policy?.approvalRequiredFor, undefined);
    assert.deepEqual(fetched.policy?.approvalRequiredFor?.stages, []);
    assert.deepEqual((await registry.getModel(governed.name)).policy?.approvalRequiredFor?.stages, [Stage.PRODUCTION]);
    assert.equal(created.createdBy, "alice");
    // And it is obeyed: STAGING to PRODUCTION applies without a request.
    const v = await registry.registerVersion({ model: MODEL, artifactUri: "s3://models/fraud/1/", targetStage: Stage.STAGING });
    const moved = await registry.transitionStage({ model: MODEL, version: v.version, targetStage: Stage.PRODUCTION });
    assert.equal(moved.request, undefined);
    assert.equal(moved.version?.stage, Stage.PRODUCTION);
    assert.equal((await registry.getModel(MODEL)).productionVersion, 1n);
  });

  test("a retried RegisterVersion with the same request_id returns the original version", async () => {
    await registry.createModel({ name: MODEL, policy: UNGOVERNED });
    const requestId = randomUUID();
    const req = { model: MODEL, artifactUri: "s3://models/fraud/1/", requestId, trainingMetrics: { accuracy: 0.93 } };

    const first = await registry.registerVersion(req);
    const retry = await registry.registerVersion(req);

    assert.equal(first.version, 1n);
    assert.equal(retry.version, 1n);
    assert.deepEqual(retry.createTime, first.createTime);
    assert.deepEqual((await collect(registry.listVersions({ model: MODEL }))).map((v) => v.version), [1n]);
    const registered = await collect(registry.listEvents({ model: MODEL, types: [EventType.VERSION_REGISTERED] }));
    assert.equal(registered.length, 1);
    // The same id with a different request is refused, and a new id is a new version.
    const reused = await rejection(registry.registerVersion({ ...req, artifactUri: "s3://models/fraud/other/" }));
    assert.equal(reused.code, Code.InvalidArgument);
    const other = await registry.registerVersion({ ...req, requestId: randomUUID() });
    assert.equal(other.version, 2n);
  });

  test("a refused call's google.rpc.BadRequest field violations are read, and nothing changes", async () => {
    const badName = await rejection(registry.createModel({ name: "Not A Valid Name!" }));
    assert.equal(badName.code, Code.InvalidArgument);
    const violations = fieldViolations(badName);
    assert.deepEqual(violations.map((v) => v.field), ["name"]);
    assert.ok(violations[0].description.length > 0);
    assert.deepEqual(await collect(registry.listEvents()), []);

    // Every bad field of one request is reported at once.
    await registry.createModel({ name: MODEL, policy: UNGOVERNED });
    const two = await rejection(registry.registerVersion({ model: MODEL, artifactUri: "", trainingMetrics: { accuracy: NaN } }));
    const fields = fieldViolations(two).map((v) => v.field);
    assert.ok(fields.includes("artifact_uri"), String(fields));
    assert.ok(fields.some((f) => f.startsWith("training_metrics")), String(fields));
    assert.deepEqual(await collect(registry.listVersions({ model: MODEL })), []);

    // Another code carries other details, and no field violations.
    const missing = await rejection(registry.getModel("no-such-model"));
    assert.equal(errorCode(missing), Code.NotFound);
    assert.deepEqual(fieldViolations(missing), []);
    assert.equal(errorDetail(missing, googleRpc.ResourceInfoSchema)?.resourceName, "no-such-model");
  });

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    test(`a watch from 0 resumes after a server restart (${signal}) with no gap, no duplicate, and a bookmark`, async () => {
      await registry.createModel({ name: MODEL, policy: UNGOVERNED });
      await registry.registerVersion({ model: MODEL, artifactUri: "s3://models/fraud/1/", targetStage: Stage.STAGING });
      const watch = registry.watch({ models: [MODEL] }, { afterSequence: 0n, initialBackoffMs: 50, maxBackoffMs: 500 });
      const collector = new Collector(watch);
      await collector.waitCaughtUp(await lastSequence(registry));
      // The registered events arrived, replayed from the beginning.
      assert.deepEqual(
        collector.events().map((e) => e.type),
        [EventType.MODEL_CREATED, EventType.VERSION_REGISTERED, EventType.STAGE_CHANGED],
      );
      await registry.transitionStage({ model: MODEL, version: 1n, targetStage: Stage.PRODUCTION });
      await collector.waitCaughtUp(await lastSequence(registry));
      const seenBefore = collector.events().length;

      // Stop the server under the stream, start it on the same port and
      // database, and commit events at once, while the watch reconnects.
      const code = await server.stop(signal);
      if (signal === "SIGTERM") assert.equal(code, 0, server.log());
      await server.start();
      await registry.registerVersion({ model: MODEL, artifactUri: "s3://models/fraud/2/", targetStage: Stage.STAGING });
      await registry.transitionStage({ model: MODEL, version: 2n, targetStage: Stage.PRODUCTION });
      await registry.setAlias(MODEL, "champion", 2n);
      const end = await lastSequence(registry);
      await collector.waitCaughtUp(end);
      await collector.stop();

      assert.equal(collector.error, undefined);
      assert.ok(watch.reconnects >= 1, `reconnects: ${watch.reconnects}`);
      assert.equal(seenBefore, 4);
      assert.equal(watch.cursor, end);
      assertSameEvents(collector.events(), await collect(registry.listEvents({ model: MODEL })));
      // The last message is a heartbeat bookmarking the end of the log.
      const last = collector.items[collector.items.length - 1];
      assert.equal(last.kind.case, "heartbeat");
      assert.equal(last.kind.value?.sequence, end);
    });
  }

  test("a watch without afterSequence starts at the end; filters narrow it; the cursor follows heartbeats", async () => {
    await registry.createModel({ name: MODEL, policy: UNGOVERNED });
    await registry.registerVersion({ model: MODEL, artifactUri: "s3://models/fraud/1/" });
    const end = await lastSequence(registry);

    const fromNow = new Collector(registry.watch({ models: [MODEL] }));
    const staged = new Collector(
      registry.watch({ types: [EventType.STAGE_CHANGED], toStages: [Stage.STAGING] }, { afterSequence: 0n }),
    );
    await fromNow.waitCaughtUp(end);
    await registry.transitionStage({ model: MODEL, version: 1n, targetStage: Stage.STAGING });
    await registry.transitionStage({ model: MODEL, version: 1n, targetStage: Stage.PRODUCTION });
    await fromNow.waitCaughtUp(end + 2n);
    await staged.waitCaughtUp(end + 2n);
    await fromNow.stop();
    await staged.stop();

    const first = fromNow.items[0];
    assert.equal(first.kind.case, "heartbeat");
    assert.equal(first.kind.value?.sequence, end);
    assert.deepEqual(fromNow.events().map((e) => e.sequence), [end + 1n, end + 2n]);
    assert.deepEqual(staged.events().map((e) => [e.sequence, e.toStage]), [[end + 1n, Stage.STAGING]]);
    assert.equal(staged.watch.cursor, end + 2n); // past the last matching event, thanks to the heartbeat
  });
});
