import { connect, EventType, Stage } from "@modelreg/client";

const address = process.env.MODELREG_ADDRESS ?? "127.0.0.1:50051";
const registry = connect(address, { actor: "alice" }); // or { token }, { caCert: "ca.pem" }
const bob = connect(address, { actor: "bob" }); // a second person, to approve
await registry.createModel({ name: "churn", description: "Customer churn classifier" });
const v = await registry.registerVersion({ model: "churn", artifactUri: "s3://models/churn/1/",
  requestId: "ci-run-7", trainingMetrics: { auc: 0.91 }, targetStage: Stage.STAGING });
const asked = await registry.transitionStage({ model: "churn", version: v.version, targetStage: Stage.PRODUCTION });
await bob.approveTransition(asked.request!.id, "beats the baseline");
for await (const item of registry.watch({ models: ["churn"] }, { afterSequence: 0n })) { // 0n = replay from the start
  if (item.kind.case !== "event") break; // a heartbeat is a bookmark: every event so far has arrived
  const event = item.kind.value;
  console.log(`${event.sequence} ${EventType[event.type]} ${Stage[event.toStage]}`);
}
registry.close();
bob.close();
