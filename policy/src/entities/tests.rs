//! Tests that the hot-path entities and context conform to the schema and match what Cedar's public
//! constructors build.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, Request, RestrictedExpression};

use super::*;
use crate::request::Action;
use crate::schema::shared;

fn tech_entity(groups: &[&str]) -> ast::Entity {
    let groups: Vec<GroupName> = groups.iter().map(|g| g.parse().unwrap()).collect();
    technician(
        shared().unwrap(),
        &"northwind".parse().unwrap(),
        &"alice".parse().unwrap(),
        &groups,
    )
}

fn acme() -> EntityUid {
    EntityUid::from_type_name_and_id(shared().unwrap().customer.clone(), EntityId::new("acme"))
}

fn db01() -> TargetInfo {
    TargetInfo {
        customer: "acme".parse().unwrap(),
        id: "db01".parse().unwrap(),
        tags: vec!["prod".to_owned(), "db".to_owned()],
        port: 5432,
        protocol: "postgres".to_owned(),
    }
}

fn request_ctx(source_ip: &str) -> RequestContext {
    RequestContext {
        now: "2025-01-15T17:30:00Z".parse().unwrap(),
        minutes: 60,
        source_ip: source_ip.parse().unwrap(),
        ticket: Some("CHG-1".to_owned()),
        mfa: false,
    }
}

#[test]
fn built_entities_and_context_conform_to_the_schema() {
    let s = shared().unwrap();
    let schema = &s.schema;
    let customer = Entity::new_no_attrs(acme(), HashSet::new());
    let local = jiff::tz::TimeZone::UTC.to_datetime("2025-01-15T17:30:00Z".parse().unwrap());
    for source_ip in ["10.1.2.3", "2001:db8::1", "::ffff:10.0.0.1"] {
        for (action, principal) in [
            (Action::Connect, tech_entity(&["support", "oncall"])),
            (Action::Request, tech_entity(&[])),
            (
                Action::Approve,
                approver(s, &"bob".parse().unwrap(), &acme()),
            ),
        ] {
            let resource = target(s, &db01(), &acme());
            Request::new(
                principal.uid().clone().into(),
                s.action(action).clone(),
                resource.uid().clone().into(),
                cedar_policy::Context::from(context(s, local, &request_ctx(source_ip)).unwrap()),
                Some(schema),
            )
            .unwrap_or_else(|e| panic!("{action} from {source_ip}: {e}"));
            Entities::from_entities(
                [
                    Entity::from(principal),
                    Entity::from(resource),
                    customer.clone(),
                ],
                Some(schema),
            )
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        }
    }
}

#[test]
fn entities_match_cedars_public_constructors() {
    let s = shared().unwrap();
    let string = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let tech_uid: EntityUid = r#"Sallyport::Technician::"northwind/alice""#.parse().unwrap();
    let expected = Entity::new(
        tech_uid,
        HashMap::from([
            ("provider".to_owned(), string("northwind")),
            ("name".to_owned(), string("alice")),
        ]),
        HashSet::from([
            r#"Sallyport::Group::"support""#.parse().unwrap(),
            r#"Sallyport::Group::"oncall""#.parse().unwrap(),
        ]),
    )
    .unwrap();
    assert_eq!(Entity::from(tech_entity(&["support", "oncall"])), expected);

    let expected = Entity::new(
        r#"Sallyport::Target::"db01""#.parse().unwrap(),
        HashMap::from([
            (
                "tags".to_owned(),
                RestrictedExpression::new_set([string("prod"), string("db")]),
            ),
            ("port".to_owned(), RestrictedExpression::new_long(5432)),
            ("protocol".to_owned(), string("postgres")),
        ]),
        HashSet::from([acme()]),
    )
    .unwrap();
    assert_eq!(Entity::from(target(s, &db01(), &acme())), expected);

    let expected = Entity::new(
        r#"Sallyport::Approver::"bob""#.parse().unwrap(),
        HashMap::from([("name".to_owned(), string("bob"))]),
        HashSet::from([acme()]),
    )
    .unwrap();
    assert_eq!(
        Entity::from(approver(s, &"bob".parse().unwrap(), &acme())),
        expected
    );
}

#[test]
fn context_matches_cedars_public_constructors() {
    let s = shared().unwrap();
    for (addr, shown) in [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
    ] {
        assert_eq!(
            ip(s, addr.parse().unwrap()),
            RestrictedExpression::new_ip(shown)
        );
    }
    // 2025-01-15 is a Wednesday.
    let local = jiff::tz::TimeZone::UTC.to_datetime("2025-01-15T17:30:00Z".parse().unwrap());
    let expected = cedar_policy::Context::from_pairs([
        ("hour".to_owned(), RestrictedExpression::new_long(17)),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_string("Wed".to_owned()),
        ),
        ("minutes".to_owned(), RestrictedExpression::new_long(60)),
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip("10.1.2.3"),
        ),
        (
            "ticket".to_owned(),
            RestrictedExpression::new_string("CHG-1".to_owned()),
        ),
        ("mfa".to_owned(), RestrictedExpression::new_bool(false)),
    ])
    .unwrap();
    assert_eq!(
        &context(s, local, &request_ctx("10.1.2.3")).unwrap(),
        expected.as_ref()
    );
    let mut no_ticket = request_ctx("10.1.2.3");
    no_ticket.ticket = None;
    let ctx = cedar_policy::Context::from(context(s, local, &no_ticket).unwrap());
    let ticket = ctx.get("ticket").unwrap();
    assert_eq!(ticket.to_string(), "\"\"");
}

#[test]
fn weekdays_are_three_letter_names() {
    let names: Vec<&str> = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ]
    .into_iter()
    .map(weekday_name)
    .collect();
    assert_eq!(names, ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]);
}
