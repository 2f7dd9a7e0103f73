//! Durability across restarts: a server stopped and started on the same
//! database has every model, version, alias and event, its hash chain still
//! verifies, and a watcher resumes from its old cursor.

use modelreg_client::pb::{Stage, watch_transitions_response::Kind};
use modelreg_tests::{
    Engine, TestDb, all_events, conformance, create_model, get_model, list_versions, register,
    register_many, set_alias, spawn_app, transition, verify_audit, watch_after,
};

conformance!(data_and_cursors_survive_a_restart);
use tokio_stream::StreamExt;

/// Stop, start on the same database: all data present and identical, the
/// audit chain verifies, sequences continue without a gap, and a watcher
/// resuming from its pre-restart cursor gets exactly the events after it.
async fn data_and_cursors_survive_a_restart(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "durable").await;
    register_many(&mut c, "durable", 2, Stage::Staging).await;
    transition(&mut c, "durable", 1, Stage::Production)
        .await
        .unwrap();
    set_alias(&mut c, "durable", "champion", 1).await.unwrap();
    let model_before = get_model(&mut c, "durable").await;
    let versions_before = list_versions(&mut c, "durable").await;
    let events_before = all_events(&mut c).await;
    let cursor = events_before.last().unwrap().sequence;
    if db.engine == Engine::Sqlite {
        let path = db.url.trim_start_matches("sqlite://");
        assert!(std::path::Path::new(path).exists(), "{path}");
    }

    // Act
    let db = app.stop().await;
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();

    // Assert
    let model_after = get_model(&mut c, "durable").await;
    assert_eq!(model_after, model_before);
    let versions_after = list_versions(&mut c, "durable").await;
    assert_eq!(versions_after, versions_before);
    assert_eq!(all_events(&mut c).await, events_before);
    let verify = verify_audit(&mut c).await;
    assert!(verify.ok);
    assert_eq!(verify.events_checked, cursor);

    let mut stream = watch_after(&mut c, cursor).await.unwrap();
    let v3 = register(&mut c, "durable", Stage::None).await;
    assert_eq!(v3.version, 3, "version numbers continue after a restart");
    loop {
        match stream.next().await.unwrap().unwrap().kind.unwrap() {
            Kind::Event(e) => {
                assert_eq!(e.sequence, cursor + 1);
                assert_eq!(e.version, 3);
                assert_eq!(e.prev_hash, events_before.last().unwrap().hash);
                break;
            }
            Kind::Heartbeat(h) => assert_eq!(h.sequence, cursor),
        }
    }
}

/// `sqlite:///absolute/path` creates the database file and its missing
/// folders on first start.
#[tokio::test]
async fn the_database_file_and_folder_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/registry.db");
    let url = format!("sqlite://{}", path.display());
    assert!(url.starts_with("sqlite:///"));
    let app = modelreg_server::Application::build(modelreg_server::Settings::for_database(url))
        .await
        .expect("builds on a new path");
    drop(app);
    assert!(path.exists());
}

/// A database URL the server cannot use is refused at start with a message,
/// not a panic.
#[tokio::test]
async fn unusable_database_urls_are_refused() {
    for url in ["mysql://localhost/x", "sqlite::memory:"] {
        let err = modelreg_server::Application::build(modelreg_server::Settings::for_database(url))
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} must be refused"));
        assert!(err.to_string().contains("database_url"), "{err}");
    }
}
