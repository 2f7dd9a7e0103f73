//! The one table of which role each action needs. An action is one thing a
//! caller can ask of the registry, named as its `ModelRegistryService`
//! method: the gRPC auth layer finds it by that name ([`super::required_role`]),
//! the dashboard names it directly, and both ask [`Action::required_role`].
//! What depends on the resource (four-eyes, cancelling one's own request) is
//! not here but in [`crate::app::authz`].

use std::fmt;

use super::Role;

/// Something a caller can ask of the registry: one per RPC, named as it
/// (the proto documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateModel,
    GetModel,
    ListModels,
    UpdateModel,
    RegisterVersion,
    GetVersion,
    ListVersions,
    SetAlias,
    DeleteAlias,
    TransitionStage,
    ApproveTransition,
    RejectTransition,
    CancelTransition,
    ListTransitionRequests,
    Rollback,
    CreateEvaluationSet,
    GetEvaluationSet,
    ListEvaluationSets,
    AttachEvaluation,
    ListEvaluations,
    CompareVersions,
    ReportDeployment,
    ReportLiveMetric,
    ReportWorkerFailure,
    ListEvents,
    VerifyAuditLog,
    WatchTransitions,
    UpdateVersion,
    ImportVersion,
    Consume,
    AckEvent,
    RejectEvent,
    GetConsumer,
    ListConsumers,
    DeleteConsumer,
    ListDeadLetters,
    RetryDeadLetter,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 37] = [
        Action::CreateModel,
        Action::GetModel,
        Action::ListModels,
        Action::UpdateModel,
        Action::RegisterVersion,
        Action::GetVersion,
        Action::ListVersions,
        Action::SetAlias,
        Action::DeleteAlias,
        Action::TransitionStage,
        Action::ApproveTransition,
        Action::RejectTransition,
        Action::CancelTransition,
        Action::ListTransitionRequests,
        Action::Rollback,
        Action::CreateEvaluationSet,
        Action::GetEvaluationSet,
        Action::ListEvaluationSets,
        Action::AttachEvaluation,
        Action::ListEvaluations,
        Action::CompareVersions,
        Action::ReportDeployment,
        Action::ReportLiveMetric,
        Action::ReportWorkerFailure,
        Action::ListEvents,
        Action::VerifyAuditLog,
        Action::WatchTransitions,
        Action::UpdateVersion,
        Action::ImportVersion,
        Action::Consume,
        Action::AckEvent,
        Action::RejectEvent,
        Action::GetConsumer,
        Action::ListConsumers,
        Action::DeleteConsumer,
        Action::ListDeadLetters,
        Action::RetryDeadLetter,
    ];

    /// The role the action needs: the table both edges enforce.
    pub fn required_role(self) -> Role {
        use Action::*;
        match self {
            GetModel
            | ListModels
            | GetVersion
            | ListVersions
            | ListTransitionRequests
            | GetEvaluationSet
            | ListEvaluationSets
            | ListEvaluations
            | CompareVersions
            | ListEvents
            | VerifyAuditLog
            | WatchTransitions
            // A consumer is a shared subscription: reading is what it needs;
            // only the identity that joined as a member settles its events.
            | Consume
            | AckEvent
            | RejectEvent
            | GetConsumer
            | ListConsumers
            | ListDeadLetters => Role::Reader,
            CreateModel | UpdateModel | RegisterVersion | SetAlias | DeleteAlias
            | TransitionStage | CancelTransition | UpdateVersion => Role::Publisher,
            // Deployment workers report their failures with ReportDeployment FAILED.
            AttachEvaluation | ReportWorkerFailure => Role::Evaluator,
            ReportDeployment | ReportLiveMetric => Role::Deployer,
            ApproveTransition | RejectTransition | Rollback | RetryDeadLetter => Role::Approver,
            // An import records history no one here decided: admins only.
            CreateEvaluationSet | ImportVersion | DeleteConsumer => Role::Admin,
        }
    }

    /// The `ModelRegistryService` method that asks for it.
    pub fn method(self) -> &'static str {
        use Action::*;
        match self {
            CreateModel => "CreateModel",
            GetModel => "GetModel",
            ListModels => "ListModels",
            UpdateModel => "UpdateModel",
            RegisterVersion => "RegisterVersion",
            GetVersion => "GetVersion",
            ListVersions => "ListVersions",
            SetAlias => "SetAlias",
            DeleteAlias => "DeleteAlias",
            TransitionStage => "TransitionStage",
            ApproveTransition => "ApproveTransition",
            RejectTransition => "RejectTransition",
            CancelTransition => "CancelTransition",
            ListTransitionRequests => "ListTransitionRequests",
            Rollback => "Rollback",
            CreateEvaluationSet => "CreateEvaluationSet",
            GetEvaluationSet => "GetEvaluationSet",
            ListEvaluationSets => "ListEvaluationSets",
            AttachEvaluation => "AttachEvaluation",
            ListEvaluations => "ListEvaluations",
            CompareVersions => "CompareVersions",
            ReportDeployment => "ReportDeployment",
            ReportLiveMetric => "ReportLiveMetric",
            ReportWorkerFailure => "ReportWorkerFailure",
            ListEvents => "ListEvents",
            VerifyAuditLog => "VerifyAuditLog",
            WatchTransitions => "WatchTransitions",
            UpdateVersion => "UpdateVersion",
            ImportVersion => "ImportVersion",
            Consume => "Consume",
            AckEvent => "AckEvent",
            RejectEvent => "RejectEvent",
            GetConsumer => "GetConsumer",
            ListConsumers => "ListConsumers",
            DeleteConsumer => "DeleteConsumer",
            ListDeadLetters => "ListDeadLetters",
            RetryDeadLetter => "RetryDeadLetter",
        }
    }

    /// The action of a method name (the last segment of its gRPC path).
    pub fn from_method(method: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.method() == method)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every action is found by its method name, and only by it.
    #[test]
    fn actions_are_found_by_method() {
        for a in Action::ALL {
            assert_eq!(Action::from_method(a.method()), Some(a));
            assert_eq!(a.to_string(), a.method());
        }
        assert_eq!(Action::from_method("DropEverything"), None);
        assert_eq!(Action::ApproveTransition.required_role(), Role::Approver);
        assert_eq!(Action::CreateEvaluationSet.required_role(), Role::Admin);
        assert_eq!(Action::ImportVersion.required_role(), Role::Admin);
    }
}
