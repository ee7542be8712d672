//! Unit tests of `rewrite`: which binds become driver volumes, and what else stays.

use std::cell::RefCell;

use super::*;

/// Sources by path prefix: /home/u is the user's, /etc someone else's, /secret unreadable,
/// /home/u/new missing.
struct Fake {
    created: RefCell<Vec<String>>,
    changes_users: bool,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            created: RefCell::new(Vec::new()),
            changes_users: false,
        }
    }
}

impl Sources for Fake {
    fn classify(&self, path: &str) -> Source {
        if path.starts_with("/home/u/new") {
            Source::Missing
        } else if path.starts_with("/home/u") {
            Source::OwnFolder
        } else if path.starts_with("/secret") {
            Source::Unreachable("Permission denied".into())
        } else {
            Source::Other
        }
    }

    fn create(&self, path: &str) -> Result<(), String> {
        self.created.borrow_mut().push(path.into());
        Ok(())
    }

    fn container(&self, image: &str, user: &str) -> Result<((u32, u32), bool), String> {
        assert_eq!(image, "img");
        match user {
            "" | "root" => Ok(((0, 0), self.changes_users)),
            "1000" => Ok(((1000, 1000), self.changes_users)),
            other => Err(format!("unable to find user {other}")),
        }
    }
}

const OWNER: Owner = Owner {
    uid: 1234,
    gid: 1234,
};

fn rewrite(body: Value, fake: &Fake) -> Result<Option<Value>, Refused> {
    let bytes = serde_json::to_vec(&body).unwrap();
    create(&bytes, OWNER, fake).map(|out| out.map(|b| serde_json::from_slice(&b).unwrap()))
}

fn volume(source: &str, target: &str, read_only: bool, uid: u32) -> Value {
    let mut options = json!({
        "source": source, "owner": "1234:1234", "uid": uid.to_string(), "gid": uid.to_string()
    });
    if read_only {
        options["ro"] = json!("true");
    }
    json!({
        "Type": "volume",
        "Target": target,
        "VolumeOptions": {"DriverConfig": {"Name": "asme", "Options": options}}
    })
}

#[test]
fn own_folders_become_volumes_and_the_rest_stays() {
    let fake = Fake::new();
    let body = json!({
        "Image": "img",
        "User": "",
        "Labels": {"keep": "me"},
        "HostConfig": {
            "Binds": [
                "/home/u/src:/src",
                "/home/u/out:/out:ro",
                "/etc/ssl:/etc/ssl:ro",
                "named:/data",
                "/home/u/z:/z:Z",
                "/var/run/docker.sock:/var/run/docker.sock"
            ],
            "Mounts": [
                {"Type": "bind", "Source": "/home/u/m", "Target": "/m", "ReadOnly": true},
                {"Type": "bind", "Source": "/home/u/p", "Target": "/p",
                 "BindOptions": {"Propagation": "rshared"}},
                {"Type": "tmpfs", "Target": "/tmp"}
            ],
            "Memory": 0
        }
    });
    let out = rewrite(body, &fake).unwrap().expect("rewritten");
    assert_eq!(
        out["HostConfig"]["Binds"],
        json!([
            "/etc/ssl:/etc/ssl:ro",
            "named:/data",
            "/home/u/z:/z:Z",
            "/var/run/docker.sock:/var/run/docker.sock"
        ])
    );
    assert_eq!(
        out["HostConfig"]["Mounts"],
        json!([
            {"Type": "bind", "Source": "/home/u/p", "Target": "/p",
             "BindOptions": {"Propagation": "rshared"}},
            {"Type": "tmpfs", "Target": "/tmp"},
            volume("/home/u/src", "/src", false, 0),
            volume("/home/u/out", "/out", true, 0),
            volume("/home/u/m", "/m", true, 0),
        ])
    );
    assert_eq!(out["HostConfig"]["Memory"], 0);
    assert_eq!(out["Labels"]["keep"], "me");
    let original: Value = serde_json::from_str(out["Labels"][LABEL].as_str().unwrap()).unwrap();
    assert_eq!(original["Binds"][0], "/home/u/src:/src");
    assert_eq!(original["Mounts"][0]["Source"], "/home/u/m");
}

#[test]
fn the_container_user_and_a_program_that_changes_users_choose_the_mapping() {
    let mut fake = Fake::new();
    fake.changes_users = true;
    let body = json!({"Image": "img", "User": "1000", "HostConfig": {"Binds": ["/home/u:/w"]}});
    let out = rewrite(body, &fake).unwrap().unwrap();
    let options = &out["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"];
    assert_eq!(options["uid"], "1000");
    assert_eq!(options["gid"], "1000");
    assert_eq!(options["mapping"], "fuse");
}

#[test]
fn a_missing_source_is_created_by_the_user_and_mapped() {
    let fake = Fake::new();
    let body = json!({"Image": "img", "HostConfig": {"Binds": ["/home/u/new/dir:/w"]}});
    let out = rewrite(body, &fake).unwrap().unwrap();
    assert_eq!(*fake.created.borrow(), vec!["/home/u/new/dir".to_string()]);
    assert_eq!(out["HostConfig"]["Mounts"][0]["Target"], "/w");
    // A Mounts bind's missing source is the engine's to refuse.
    let fake = Fake::new();
    let body = json!({"Image": "img", "HostConfig": {"Mounts": [
        {"Type": "bind", "Source": "/home/u/new/x", "Target": "/w"}
    ]}});
    assert_eq!(rewrite(body, &fake).unwrap(), None);
    assert!(fake.created.borrow().is_empty());
}

#[test]
fn nothing_to_map_or_malformed_json_goes_as_it_came() {
    let fake = Fake::new();
    for body in [
        json!({"Image": "img"}),
        json!({"Image": "img", "HostConfig": null}),
        json!({"Image": "img", "HostConfig": {"Binds": null, "Mounts": null}}),
        json!({"Image": "img", "HostConfig": {"Binds": ["/etc:/etc", "vol:/v"]}}),
    ] {
        assert_eq!(rewrite(body.clone(), &fake).unwrap(), None, "{body}");
    }
    assert_eq!(create(b"{not json", OWNER, &fake).unwrap(), None);
}

#[test]
fn unreadable_sources_and_unknown_users_are_refused_before_anything_is_made() {
    let fake = Fake::new();
    let body = json!({"Image": "img", "HostConfig": {"Binds": ["/home/u/new:/n", "/secret:/s"]}});
    let refused = rewrite(body, &fake).unwrap_err();
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("/secret"), "{}", refused.message);
    assert!(fake.created.borrow().is_empty(), "nothing is created");

    let body =
        json!({"Image": "img", "User": "nobody", "HostConfig": {"Binds": ["/home/u/new:/n"]}});
    let refused = rewrite(body, &fake).unwrap_err();
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("nobody"), "{}", refused.message);
    assert!(fake.created.borrow().is_empty(), "nothing is created");
}

/// A container read back shows the binds it was created with, not the driver volumes.
#[test]
fn containers_read_back_show_their_binds() {
    let fake = Fake::new();
    let body = json!({"Image": "img", "HostConfig": {
        "Binds": ["/home/u/src:/src:ro", "/etc:/etc"],
        "Mounts": [{"Type": "bind", "Source": "/home/u/m", "Target": "/m"}]
    }});
    let created = rewrite(body, &fake).unwrap().unwrap();
    let label = created["Labels"][LABEL].clone();
    let mut container = json!({
        "Config": {"Labels": {LABEL: label}},
        "HostConfig": {"Binds": ["/etc:/etc"], "Mounts": created["HostConfig"]["Mounts"]},
        "Mounts": [
            {"Type": "volume", "Name": "abc", "Driver": "asme", "Destination": "/src",
             "Source": "/var/lib/docker/plugins/x/propagated-mount/abc", "RW": false},
            {"Type": "bind", "Source": "/etc", "Destination": "/etc", "RW": true},
            {"Type": "volume", "Name": "def", "Driver": "asme:latest", "Destination": "/m",
             "RW": true},
            {"Type": "volume", "Name": "other", "Driver": "local", "Destination": "/v"}
        ]
    });
    assert!(inspected(&mut container));
    assert_eq!(
        container["HostConfig"]["Binds"],
        json!(["/home/u/src:/src:ro", "/etc:/etc"])
    );
    assert_eq!(
        container["HostConfig"]["Mounts"],
        json!([{"Type": "bind", "Source": "/home/u/m", "Target": "/m"}])
    );
    let shown = &container["Mounts"];
    assert_eq!(
        shown[0],
        json!({"Type": "bind", "Source": "/home/u/src", "Destination": "/src", "Mode": "ro",
               "RW": false, "Propagation": "rprivate"})
    );
    assert_eq!(shown[1]["Source"], "/etc");
    assert_eq!(shown[2]["Source"], "/home/u/m", "{container}");
    assert_eq!(shown[3]["Driver"], "local");

    let mut someone_elses = json!({"Config": {"Labels": {}}, "Mounts": []});
    assert!(!inspected(&mut someone_elses));
}

/// Removing one of the proxy's containers removes the driver volumes of its binds; other
/// containers' volumes are not the proxy's to remove.
#[test]
fn a_removed_containers_driver_volumes_are_found() {
    let container = json!({
        "Config": {"Labels": {LABEL: "{}"}},
        "Mounts": [
            {"Type": "volume", "Name": "a1", "Driver": "asme:latest", "Destination": "/w"},
            {"Type": "volume", "Name": "image-volume", "Driver": "local", "Destination": "/v"},
            {"Type": "bind", "Source": "/etc", "Destination": "/etc"}
        ]
    });
    assert_eq!(volumes_of(&container), vec!["a1".to_string()]);
    let not_ours = json!({"Config": {"Labels": {}}, "Mounts": container["Mounts"]});
    assert!(volumes_of(&not_ours).is_empty());
}

/// A swarm service's bind mounts are rewritten like a container's.
#[test]
fn a_services_binds_become_volumes() {
    let fake = Fake::new();
    let body = json!({"Name": "s", "TaskTemplate": {"ContainerSpec": {
        "Image": "img",
        "Mounts": [
            {"Type": "bind", "Source": "/home/u/w", "Target": "/w"},
            {"Type": "bind", "Source": "/etc", "Target": "/etc"}
        ]
    }}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let out: Value =
        serde_json::from_slice(&service(&bytes, OWNER, &fake).unwrap().unwrap()).unwrap();
    let mounts = &out["TaskTemplate"]["ContainerSpec"]["Mounts"];
    assert_eq!(mounts[0]["Source"], "/etc");
    assert_eq!(mounts[1], volume("/home/u/w", "/w", false, 0));
    let none = json!({"Name": "s", "TaskTemplate": {"ContainerSpec": {"Image": "img"}}});
    let bytes = serde_json::to_vec(&none).unwrap();
    assert_eq!(service(&bytes, OWNER, &fake).unwrap(), None);
}
