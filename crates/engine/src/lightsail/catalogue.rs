//! The built-in catalogues: blueprints (images), bundles (sizes) and the Lightsail regions.

use super::Lightsail;

/// A built-in blueprint: an OS or app image. Every blueprint boots the built-in Linux image.
#[derive(Debug)]
pub struct Blueprint {
    pub id: &'static str,
    pub name: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
    pub version: &'static str,
    pub username: &'static str,
    pub image_id: &'static str,
}

/// A built-in bundle: the instance's size, including its system disk.
#[derive(Debug)]
pub struct Bundle {
    pub id: &'static str,
    pub name: &'static str,
    pub instance_type: &'static str,
    pub price: f64,
    pub cpu_count: u32,
    pub disk_gb: u32,
    pub ram_gb: f64,
    pub power: u32,
    pub transfer_gb: u32,
}

const LINUX_IMAGE: &str = "ami-0b5e4c3d2a1f00001";

pub const BLUEPRINTS: &[Blueprint] = &[
    Blueprint {
        id: "amazon_linux_2023",
        name: "Amazon Linux 2023",
        group: "amazon_linux_2023",
        kind: "os",
        description: "Amazon Linux 2023 (blocksnap built-in image: a system disk, no compute)",
        version: "2023.0.0",
        username: "ec2-user",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "ubuntu_22_04",
        name: "Ubuntu",
        group: "ubuntu_22",
        kind: "os",
        description: "Ubuntu 22.04 LTS (blocksnap built-in image: a system disk, no compute)",
        version: "22.04 LTS",
        username: "ubuntu",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "debian_12",
        name: "Debian",
        group: "debian_12",
        kind: "os",
        description: "Debian 12 (blocksnap built-in image: a system disk, no compute)",
        version: "12",
        username: "admin",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "wordpress",
        name: "WordPress",
        group: "wordpress",
        kind: "app",
        description: "WordPress (blocksnap built-in image: a system disk, no compute)",
        version: "6.5.3-0",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "lamp_8_bitnami",
        name: "LAMP (PHP 8)",
        group: "lamp_8",
        kind: "app",
        description: "LAMP with PHP 8 (blocksnap built-in image: a system disk, no compute)",
        version: "8.2.18-4",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "nodejs",
        name: "Node.js",
        group: "node",
        kind: "app",
        description: "Node.js (blocksnap built-in image: a system disk, no compute)",
        version: "18.20.2-0",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
];

pub const BUNDLES: &[Bundle] = &[
    Bundle {
        id: "nano_3_0",
        name: "Nano",
        instance_type: "nano",
        price: 5.0,
        cpu_count: 2,
        disk_gb: 20,
        ram_gb: 0.5,
        power: 298,
        transfer_gb: 1024,
    },
    Bundle {
        id: "micro_3_0",
        name: "Micro",
        instance_type: "micro",
        price: 7.0,
        cpu_count: 2,
        disk_gb: 40,
        ram_gb: 1.0,
        power: 500,
        transfer_gb: 2048,
    },
    Bundle {
        id: "small_3_0",
        name: "Small",
        instance_type: "small",
        price: 12.0,
        cpu_count: 2,
        disk_gb: 60,
        ram_gb: 2.0,
        power: 1000,
        transfer_gb: 3072,
    },
    Bundle {
        id: "medium_3_0",
        name: "Medium",
        instance_type: "medium",
        price: 24.0,
        cpu_count: 2,
        disk_gb: 80,
        ram_gb: 4.0,
        power: 2000,
        transfer_gb: 4096,
    },
    Bundle {
        id: "large_3_0",
        name: "Large",
        instance_type: "large",
        price: 44.0,
        cpu_count: 2,
        disk_gb: 160,
        ram_gb: 8.0,
        power: 3000,
        transfer_gb: 5120,
    },
    Bundle {
        id: "xlarge_3_0",
        name: "XLarge",
        instance_type: "xlarge",
        price: 84.0,
        cpu_count: 4,
        disk_gb: 320,
        ram_gb: 16.0,
        power: 4000,
        transfer_gb: 6144,
    },
    Bundle {
        id: "2xlarge_3_0",
        name: "2XLarge",
        instance_type: "2xlarge",
        price: 164.0,
        cpu_count: 8,
        disk_gb: 640,
        ram_gb: 32.0,
        power: 5000,
        transfer_gb: 7168,
    },
];

pub fn blueprint(id: &str) -> Option<&'static Blueprint> {
    BLUEPRINTS.iter().find(|b| b.id == id)
}

pub fn bundle(id: &str) -> Option<&'static Bundle> {
    BUNDLES.iter().find(|b| b.id == id)
}

/// A Lightsail region: (name, display name, continent, description).
pub struct RegionInfo {
    pub name: &'static str,
    pub display_name: &'static str,
    pub continent_code: &'static str,
    pub description: &'static str,
    pub zones: Vec<String>,
}

const LIGHTSAIL_REGIONS: &[(&str, &str, &str, &str)] = &[
    ("us-east-1", "Virginia", "NA", "This region is recommended to serve users in the eastern United States"),
    ("us-east-2", "Ohio", "NA", "This region is recommended to serve users in the eastern United States"),
    (
        "us-west-2",
        "Oregon",
        "NA",
        "This region is recommended to serve users in the northwestern United States, Alaska, and western Canada",
    ),
    ("ca-central-1", "Montreal", "NA", "This region is recommended to serve users in Canada"),
    (
        "eu-west-1",
        "Ireland",
        "EU",
        "This region is recommended to serve users in Ireland, the United Kingdom, and Iceland",
    ),
    (
        "eu-west-2",
        "London",
        "EU",
        "This region is recommended to serve users in London, the United Kingdom, and Iceland",
    ),
    ("eu-west-3", "Paris", "EU", "This region is recommended to serve users in France, Spain, and Portugal"),
    ("eu-central-1", "Frankfurt", "EU", "This region is recommended to serve users in Germany and Central Europe"),
    ("eu-north-1", "Stockholm", "EU", "This region is recommended to serve users in Scandinavia and Northern Europe"),
    ("ap-south-1", "Mumbai", "AP", "This region is recommended to serve users in India"),
    ("ap-southeast-1", "Singapore", "AP", "This region is recommended to serve users in Southeast Asia"),
    ("ap-southeast-2", "Sydney", "AP", "This region is recommended to serve users in Australia and New Zealand"),
    ("ap-southeast-3", "Jakarta", "AP", "This region is recommended to serve users in Indonesia"),
    ("ap-northeast-1", "Tokyo", "AP", "This region is recommended to serve users in Japan"),
    ("ap-northeast-2", "Seoul", "AP", "This region is recommended to serve users in South Korea"),
];

impl Lightsail<'_> {
    /// The Lightsail regions this endpoint serves.
    pub fn regions(&self, include_zones: bool) -> Vec<RegionInfo> {
        LIGHTSAIL_REGIONS
            .iter()
            .filter(|r| self.engine.regions().iter().any(|s| s == r.0))
            .map(|r| RegionInfo {
                name: r.0,
                display_name: r.1,
                continent_code: r.2,
                description: r.3,
                zones: if include_zones { crate::regions::zones(r.0) } else { vec![] },
            })
            .collect()
    }

    pub(super) fn check_region(&self, ctx: &crate::model::Ctx) -> crate::error::Result<()> {
        if LIGHTSAIL_REGIONS.iter().any(|r| r.0 == ctx.region) {
            Ok(())
        } else {
            Err(super::invalid(format!(
                "Lightsail is not available in region {}; Lightsail regions: {}.",
                ctx.region,
                LIGHTSAIL_REGIONS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            )))
        }
    }
}
