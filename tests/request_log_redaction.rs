//! Redaction end to end (issue 13): a secret in a query parameter, in a
//! JSON or form body field and as a card number on a `log_bodies` route,
//! and the credential (X-API-Key, Authorization) and cookies, never appear
//! in any column of any `request_logs` row (checked with SQL over the whole
//! row as text) nor in the admin API's answers; bodies are stored only on
//! `log_bodies` routes.

mod common;

use std::time::Duration;

use common::*;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"{}
[[routes]]
name = "bodies"
path_prefix = "/bodies"
upstream = "echo"
scopes = ["read:echo"]
log_bodies = true

[request_logs]
flush_interval_ms = 100
"#,
        default_routes(upstream)
    )
}

/// Secrets of the test, each unique enough that finding it anywhere means
/// it leaked.
const QUERY_SECRET: &str = "qsecret-7d1e0a";
const QUERY_SECRET_2: &str = "qsecret-b2c9f4";
const BODY_PASSWORD: &str = "bpass-0c4e8b";
const BODY_TOKEN: &str = "btoken-91a6d2";
const FORM_SECRET: &str = "fsecret-5e27c3";
const COOKIE_SECRET: &str = "cookie-3f8a61";
const CARD: &str = "4111 1111 1111 1111";
const CARD_DIGITS: &str = "4111111111111111";

async fn send(req: reqwest::RequestBuilder, request_id: &str) -> u16 {
    req.header("x-request-id", request_id)
        .header("cookie", format!("session={COOKIE_SECRET}"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn stored(db: &tokio_postgres::Client, request_id: &str) -> bool {
    db.query_one(
        "SELECT count(*) FROM request_logs WHERE request_id = $1",
        &[&request_id],
    )
    .await
    .expect("count")
    .get::<_, i64>(0)
        > 0
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_row_or_the_api_and_bodies_only_where_asked() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream))).await;
    let (_, key) = gw.create_key("read:echo,write:echo", &[]).await;
    let (_, admin) = gw.create_key("admin", &[]).await;
    let http = http();

    let json_body = format!(
        r#"{{"user":"bob","password":"{BODY_PASSWORD}","nested":[{{"access_token":"{BODY_TOKEN}"}}],"card":"{CARD}"}}"#
    );
    let form_body = format!("user=bob&client_secret={FORM_SECRET}&note=hi");
    let sent = [
        (
            "red-query",
            send(
                http.get(gw.url(&format!(
                    "/bodies/q?TOKEN={QUERY_SECRET}&page=2&api%5Fkey={QUERY_SECRET_2}"
                )))
                .header("x-api-key", &key),
                "red-query",
            )
            .await,
        ),
        (
            "red-json",
            send(
                http.post(gw.url(&format!("/bodies/json?token={QUERY_SECRET}")))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(json_body.clone()),
                "red-json",
            )
            .await,
        ),
        (
            "red-form",
            send(
                http.post(gw.url("/bodies/form"))
                    .header("x-api-key", &key)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form_body.clone()),
                "red-form",
            )
            .await,
        ),
        (
            "red-nobodies",
            send(
                http.post(gw.url("/echo/plain"))
                    .header("x-api-key", &key)
                    .body(json_body.clone()),
                "red-nobodies",
            )
            .await,
        ),
        (
            // Refused before the upstream: the presented (bad) credential too.
            "red-401",
            send(
                http.get(gw.url(&format!("/bodies/x?sig={QUERY_SECRET}")))
                    .header("authorization", format!("Bearer {key}x")),
                "red-401",
            )
            .await,
        ),
    ];
    for (id, status) in &sent {
        let want = if *id == "red-401" { 401 } else { 200 };
        assert_eq!(*status, want, "{id}");
    }
    let client = db.client().await;
    let all = eventually(Duration::from_secs(10), || async {
        let mut all = true;
        for (id, _) in &sent {
            all &= stored(&client, id).await;
        }
        all
    })
    .await;
    assert!(all, "records missing; log:\n{}", gw.logs());

    let bad_key = format!("{key}x");
    let secrets = [
        QUERY_SECRET,
        QUERY_SECRET_2,
        BODY_PASSWORD,
        BODY_TOKEN,
        FORM_SECRET,
        COOKIE_SECRET,
        CARD,
        CARD_DIGITS,
        key.as_str(),
        bad_key.as_str(),
    ];
    for secret in secrets {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM request_logs r WHERE strpos(r::text, $1) > 0",
                &[&secret],
            )
            .await
            .expect("scan rows")
            .get(0);
        assert_eq!(n, 0, "{secret} is stored in request_logs");
    }

    // What is kept: the redacted query, the bodies with their other fields.
    let row = |id: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT query, request_body, response_body FROM request_logs WHERE request_id = $1",
                    &[&id],
                )
                .await
                .expect("row")
        }
    };
    let r = row("red-query").await;
    assert_eq!(
        r.get::<_, Option<String>>(0).as_deref(),
        Some("TOKEN=REDACTED&page=2&api%5Fkey=REDACTED")
    );
    let r = row("red-json").await;
    let req_body: Option<String> = r.get(1);
    let req_body = req_body.expect("request body kept on a log_bodies route");
    assert!(
        req_body.contains(r#""user":"bob""#) && req_body.contains(r#""password":"REDACTED""#),
        "{req_body}"
    );
    let resp_body: Option<String> = r.get(2);
    // The echo upstream's answer repeats the query string and the cookie.
    let resp_body = resp_body.expect("response body kept on a log_bodies route");
    assert!(resp_body.contains("token=REDACTED"), "{resp_body}");
    let r = row("red-form").await;
    assert_eq!(
        r.get::<_, Option<String>>(1).as_deref(),
        Some("user=bob&client_secret=REDACTED&note=hi")
    );
    let r = row("red-nobodies").await;
    assert_eq!(
        r.get::<_, Option<String>>(1),
        None,
        "no log_bodies: no body"
    );
    assert_eq!(
        r.get::<_, Option<String>>(2),
        None,
        "no log_bodies: no body"
    );

    // The admin API shows the same rows: the list and each record.
    let (status, _, list) = get(&gw.admin_url("/api/v1/requests?limit=100"), Some(&admin)).await;
    assert_eq!(status, 200, "{list}");
    let mut answers = vec![list.to_string()];
    for rec in list["data"].as_array().expect("data") {
        let id = rec["id"].as_str().expect("id");
        let (status, _, one) = get(
            &gw.admin_url(&format!("/api/v1/requests/{id}")),
            Some(&admin),
        )
        .await;
        assert_eq!(status, 200, "{one}");
        answers.push(one.to_string());
    }
    assert!(answers.len() > sent.len(), "{answers:?}");
    for answer in &answers {
        for secret in secrets {
            assert!(
                !answer.contains(secret),
                "{secret} in an API answer: {answer}"
            );
        }
    }
}
