//! The admin API on the console listener: authentication (sessions, the local admin token,
//! lockout), and the OpenAPI document.
#![allow(clippy::unwrap_used)]

mod common;

use common::{PASSWORD, TestServer, decode};
use steward_proto::admin::{DeviceSummary, LoginRequest, LoginResponse, paths as admin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_lock_after_five_failures_and_tokens_are_required() {
    let mut ts = TestServer::start().await;

    // No token, a wrong token: AUTH-REQUIRED.
    let resp = ts
        .admin
        .get(ts.console(admin::DEVICES))
        .send()
        .await
        .unwrap();
    let (status, e) = decode::<serde_json::Value>(resp).await.unwrap_err();
    assert_eq!((status, e.id.as_str()), (401, "AUTH-REQUIRED"));
    let resp = ts
        .admin
        .get(ts.console(admin::DEVICES))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    let (status, e) = decode::<serde_json::Value>(resp).await.unwrap_err();
    assert_eq!((status, e.id.as_str()), (401, "AUTH-REQUIRED"));

    // The session token from login works, and so does the console cookie carrying it.
    let _: Vec<DeviceSummary> = ts.get_admin(admin::DEVICES).await.unwrap();
    let resp = ts
        .admin
        .get(ts.console(admin::DEVICES))
        .header("cookie", format!("steward_session={}", ts.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // The local admin token from the data directory works without a login.
    let local = std::fs::read_to_string(ts.data_dir().join("admin-token")).unwrap();
    let resp = ts
        .admin
        .get(ts.console(admin::DEVICES))
        .bearer_auth(local.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    ts.token.clear();
    let login = |password: &str| LoginRequest {
        username: "admin".into(),
        password: password.into(),
    };
    // Unknown accounts fail like wrong passwords.
    let (status, e) = ts
        .post_admin::<_, LoginResponse>(
            admin::LOGIN,
            &LoginRequest {
                username: "ghost".into(),
                password: "x".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!((status, e.id.as_str()), (401, "AUTH-FAILED"));
    for i in 1..=4 {
        let (status, e) = ts
            .post_admin::<_, LoginResponse>(admin::LOGIN, &login("wrong"))
            .await
            .unwrap_err();
        assert_eq!((status, e.id.as_str()), (401, "AUTH-FAILED"), "attempt {i}");
    }
    // The fifth failure locks the account, and says until when.
    let (status, e) = ts
        .post_admin::<_, LoginResponse>(admin::LOGIN, &login("wrong"))
        .await
        .unwrap_err();
    assert_eq!((status, e.id.as_str()), (429, "AUTH-LOCKED"));
    assert!(e.message.contains("until"), "{}", e.message);
    // Even the right password is refused while locked.
    let (status, e) = ts
        .post_admin::<_, LoginResponse>(admin::LOGIN, &login(PASSWORD))
        .await
        .unwrap_err();
    assert_eq!((status, e.id.as_str()), (429, "AUTH-LOCKED"));

    // The lock is in the database: a restart does not lift it.
    ts.server.take().unwrap().shutdown().await.unwrap();
    let server = steward_server::Server::start(
        &ts.data_dir(),
        steward_server::ServerOverrides {
            agent_addr: common::loopback0(),
            console_addr: common::loopback0(),
            crl_addr: None,
        },
    )
    .await
    .unwrap();
    ts.server = Some(server);
    let (status, _) = ts
        .post_admin::<_, LoginResponse>(admin::LOGIN, &login(PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_console_page() {
    let ts = TestServer::start().await;
    let doc: serde_json::Value = ts
        .admin
        .get(ts.console(admin::OPENAPI))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"][admin::TASKS]["post"].is_object());
    let page = ts.admin.get(ts.console("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Steward"));
    let resp = ts
        .admin
        .get(ts.console("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}
